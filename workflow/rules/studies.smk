# The papers' own analyses (gbml.studies): each unit of a study (a trained run it measures, or an
# arm it trains) in a job of its own, then one job gathers them into reports/studies/<name>/
# (dvc.yaml's per-unit and study_<name> stages list what each reads).
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
        "gbml study feature_reuse --algorithm {wildcards.algorithm} --dataset {wildcards.dataset} "
        "--ways {wildcards.ways} --shots {wildcards.shots} --seed {wildcards.seed} > {log} 2>&1"


rule study_feature_reuse:
    input:
        stage_inputs("study_feature_reuse"),
    output:
        study_summary("feature_reuse", {"similarity.png": "study_similarity.rst", "freezing.png": "study_freezing.rst"}),
    log:
        "logs/study_feature_reuse.log",
    resources:
        **job_resources("default"),
    shell:
        "gbml study feature_reuse > {log} 2>&1"


rule gradient_combinations:
    input:
        lambda w: stage_inputs("gradient_combinations", w),
    output:
        directory("studies/gradient_combinations/{arm}-seed{seed}"),
    log:
        "logs/studies/gradient_combinations/{arm}-seed{seed}.log",
    threads: job_threads()
    resources:
        **job_resources("default"),
    shell:
        "gbml study gradient_combinations --arm {wildcards.arm} --seed {wildcards.seed} > {log} 2>&1"


rule study_gradient_combinations:
    input:
        stage_inputs("study_gradient_combinations"),
    output:
        study_summary("gradient_combinations", {"curves.png": "study_gradient_combinations.rst"}),
    log:
        "logs/study_gradient_combinations.log",
    resources:
        **job_resources("default"),
    shell:
        "gbml study gradient_combinations > {log} 2>&1"


rule minibatch_overlap:
    input:
        lambda w: stage_inputs("minibatch_overlap", w),
    output:
        directory("studies/minibatch_overlap/{variant}-{sampling}-k{inner_iters}-seed{seed}"),
    log:
        "logs/studies/minibatch_overlap/{variant}-{sampling}-k{inner_iters}-seed{seed}.log",
    threads: job_threads()
    resources:
        **job_resources("default"),
    shell:
        "gbml study minibatch_overlap --variant {wildcards.variant} --sampling {wildcards.sampling} "
        "--inner-iters {wildcards.inner_iters} --seed {wildcards.seed} > {log} 2>&1"


rule study_minibatch_overlap:
    input:
        stage_inputs("study_minibatch_overlap"),
    output:
        study_summary("minibatch_overlap", {"overlap.png": "study_minibatch_overlap.rst"}),
    log:
        "logs/study_minibatch_overlap.log",
    resources:
        **job_resources("default"),
    shell:
        "gbml study minibatch_overlap > {log} 2>&1"


rule mamlpp_ablation:
    input:
        lambda w: stage_inputs("mamlpp_ablation", w),
    output:
        directory("studies/mamlpp_ablation/{arm}-seed{seed}"),
    log:
        "logs/studies/mamlpp_ablation/{arm}-seed{seed}.log",
    threads: job_threads()
    resources:
        **job_resources("train"),
    shell:
        "gbml study mamlpp_ablation --arm {wildcards.arm} --seed {wildcards.seed} > {log} 2>&1"


rule study_mamlpp_ablation:
    input:
        stage_inputs("study_mamlpp_ablation"),
    output:
        study_summary("mamlpp_ablation", {"instability.png": "study_mamlpp_instability.rst",
                                          "ablation.png": "study_mamlpp_ablation.rst"}),
    log:
        "logs/study_mamlpp_ablation.log",
    resources:
        **job_resources("default"),
    shell:
        "gbml study mamlpp_ablation > {log} 2>&1"


rule taylor_terms:
    input:
        lambda w: stage_inputs("taylor_terms", w),
    output:
        directory("studies/taylor_terms/seed{seed}"),
    log:
        "logs/studies/taylor_terms/seed{seed}.log",
    threads: job_threads()
    resources:
        **job_resources("default"),
    shell:
        "gbml study taylor_terms --seed {wildcards.seed} > {log} 2>&1"


rule study_taylor_terms:
    input:
        stage_inputs("study_taylor_terms"),
    output:
        study_summary("taylor_terms", {"taylor.png": "study_taylor_terms.rst"}),
    log:
        "logs/study_taylor_terms.log",
    resources:
        **job_resources("default"),
    shell:
        "gbml study taylor_terms > {log} 2>&1"
