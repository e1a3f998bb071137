rule fetch:
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
        "data/raw/omniglot",
        code("src/gbml/data/omniglot.py"),
        params_stamps("prepare.omniglot"),
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
        code("src/gbml/data/miniimagenet.py"),
        "src/gbml/reference/miniimagenet/SHA256SUMS",
        params_stamps("data.miniimagenet"),
    output:
        directory("data/prepared/miniimagenet"),
    log:
        "logs/prepare_miniimagenet.log",
    resources:
        **job_resources("default"),
    shell:
        "gbml prepare --dataset miniimagenet > {log} 2>&1"
