"""grainclip.pipelines: the Ray Data annotation DAG, local run / cluster submit, resume and run reports."""
