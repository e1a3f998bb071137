rule fetch:
    input:
        stage_inputs("fetch"),
    output:
        directory("data/raw/omniglot"),
    log:
        "logs/fetch.log",
    resources:
        **job_resources("default"),
    shell:
        "gbml fetch --dataset omniglot > {log} 2>&1"


rule prepare:
    input:
        stage_inputs("prepare"),
    output:
        directory("data/prepared/omniglot"),
    log:
        "logs/prepare_omniglot.log",
    resources:
        **job_resources("default"),
    shell:
        "gbml prepare --dataset omniglot > {log} 2>&1"


# Without a configured source this writes a manifest saying so (as in dvc.yaml).
rule prepare_miniimagenet:
    input:
        stage_inputs("prepare_miniimagenet"),
    output:
        directory("data/prepared/miniimagenet"),
    log:
        "logs/prepare_miniimagenet.log",
    resources:
        **job_resources("default"),
    shell:
        "gbml prepare --dataset miniimagenet > {log} 2>&1"
