rule evaluate:
    input:
        lambda w: stage_inputs(f"evaluate_{w.dataset}", w),
    output:
        directory(f"evals/{RUN}"),
    log:
        f"logs/evaluate/{RUN}.log",
    benchmark:
        f"logs/benchmarks/evaluate/{RUN}.tsv"
    threads: job_threads()
    resources:
        **job_resources("evaluate"),
    shell:
        "gbml evaluate --algorithm {wildcards.algorithm} --dataset {wildcards.dataset} --ways {wildcards.ways} "
        "--shots {wildcards.shots} --seed {wildcards.seed} > {log} 2>&1"
