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
    output:
        directory("data/prepared/omniglot"),
    params:
        settings=lambda wildcards: json.dumps(section(config, "prepare", "omniglot"), sort_keys=True),
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
    output:
        directory("data/prepared/miniimagenet"),
    params:
        settings=lambda wildcards: json.dumps(section(config, "data", "miniimagenet"), sort_keys=True),
    log:
        "logs/prepare_miniimagenet.log",
    resources:
        **job_resources("default"),
    shell:
        "gbml prepare --dataset miniimagenet > {log} 2>&1"
