rule evaluate:
    input:
        f"runs/{RUN}",
        "data/prepared/{dataset}",
        code("src/gbml/evaluate.py", "src/gbml/data/tasks.py", "src/gbml/data/prepared.py", "src/gbml/factory.py"),
        params_stamps("evaluate"),
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
