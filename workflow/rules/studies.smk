# The papers' own analyses (gbml.studies): each trained run of a study's algorithms measured in a
# job of its own, then one job gathers them into reports/studies/<name>/ (dvc.yaml's
# <name>_<dataset> and study_<name> stages list what each reads).
rule feature_reuse:
    input:
        lambda w: stage_inputs(f"feature_reuse_{w.dataset}", w),
    output:
        directory(f"studies/feature_reuse/{RUN}"),
    log:
        f"logs/studies/feature_reuse/{RUN}.log",
    threads: job_threads()
    resources:
        **job_resources("evaluate"),
    shell:
        "gbml --quiet study feature_reuse --algorithm {wildcards.algorithm} --dataset {wildcards.dataset} "
        "--ways {wildcards.ways} --shots {wildcards.shots} --seed {wildcards.seed} > {log} 2>&1"


rule study_feature_reuse:
    input:
        stage_inputs("study_feature_reuse"),
    output:
        "reports/studies/feature_reuse/similarity.csv",
        "reports/studies/feature_reuse/freezing.csv",
        report("reports/studies/feature_reuse/similarity.png", caption="../report/study_similarity.rst",
               category="Feature reuse"),
        report("reports/studies/feature_reuse/freezing.png", caption="../report/study_freezing.rst",
               category="Feature reuse"),
        "reports/studies/feature_reuse/metrics.json",
    log:
        "logs/study_feature_reuse.log",
    resources:
        **job_resources("default"),
    shell:
        "gbml --quiet study feature_reuse > {log} 2>&1"
