rule sine:
    input:
        stage_inputs("sine"),
    output:
        "reports/sine/curves.csv",
        "reports/sine/per_task.csv",
        report("reports/sine/adaptation.png", caption="../report/sine_adaptation.rst", category="Sine-wave study"),
        report("reports/sine/mse_vs_steps.png", caption="../report/sine_mse.rst", category="Sine-wave study"),
        "reports/sine/metrics.json",
    log:
        "logs/sine.log",
    threads: job_threads()
    resources:
        **job_resources("default"),
    shell:
        "gbml sine --out reports/sine > {log} 2>&1"


rule report:
    input:
        stage_inputs("report"),
    output:
        report(directory("reports/figures"), patterns=["{name}.png"], caption="../report/figures.rst",
               category="Figures"),
        report(directory("reports/tables"), patterns=["{name}.csv"], caption="../report/tables.rst",
               category="Paper tables"),
        report("reports/results.csv", caption="../report/results.rst", category="Every grid cell"),
        "reports/runs.csv",
        "reports/run_records.csv",
        directory("reports/plots"),
        report("reports/README.md", caption="../report/readme.rst", category="Report"),
        "reports/metrics.json",
    log:
        "logs/report.log",
    resources:
        **job_resources("default"),
    shell:
        # The train and evaluate jobs' benchmark files: read where present, not inputs (a run made by DVC has
        # none, and a missing benchmark file as an input would make Snakemake train the run again).
        "gbml report --snakemake-benchmarks logs/benchmarks > {log} 2>&1"
