rule train:
    input:
        lambda w: stage_inputs(f"train_{w.dataset}", w),
    output:
        directory(f"runs/{RUN}"),
    log:
        f"logs/train/{RUN}.log",
    benchmark:
        f"logs/benchmarks/train/{RUN}.tsv"   # wall time, max RSS: the report shows them per run
    threads: job_threads()
    resources:
        **job_resources("train"),
    shell:
        "gbml train --algorithm {wildcards.algorithm} --dataset {wildcards.dataset} --ways {wildcards.ways} "
        "--shots {wildcards.shots} --seed {wildcards.seed} > {log} 2>&1"
