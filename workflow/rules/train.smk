rule train:
    input:
        "data/prepared/{dataset}",
        code("src/gbml/algorithms", "src/gbml/models", "src/gbml/data/tasks.py", "src/gbml/data/prepared.py",
             "src/gbml/factory.py", "src/gbml/train.py"),
        lambda w: params_stamps(w.algorithm, f"model.{w.dataset}", "training"),
    output:
        directory(f"runs/{RUN}"),
    log:
        f"logs/train/{RUN}.log",
    threads: job_threads()
    resources:
        **job_resources("train"),
    shell:
        "gbml --quiet train --algorithm {wildcards.algorithm} --dataset {wildcards.dataset} --ways {wildcards.ways} "
        "--shots {wildcards.shots} --seed {wildcards.seed} > {log} 2>&1"
