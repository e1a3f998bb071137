rule evaluate:
    input:
        lambda w: stage_inputs(f"evaluate_{w.dataset}", w),
    output:
        directory(f"evals/{RUN}"),
    log:
        f"logs/evaluate/{RUN}.log",
    threads: job_threads()
    resources:
        **job_resources("evaluate"),
    shell:
        "gbml --quiet evaluate --algorithm {wildcards.algorithm} --dataset {wildcards.dataset} --ways {wildcards.ways} "
        "--shots {wildcards.shots} --seed {wildcards.seed} > {log} 2>&1"
