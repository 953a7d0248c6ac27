"""Record what the runner hands to its scoring children (each model is scored in a process of its own)."""

import json


def spy_on_children(monkeypatch) -> list:
    """A list that fills with each child's job (label, engine settings, runs of units) as it starts."""
    from mergekit_reasoning.bench import children

    jobs = []
    real = children.run_child

    def run_child(job_path, log_path, on_tick):
        jobs.append(json.loads(job_path.read_text()))
        return real(job_path, log_path, on_tick)

    monkeypatch.setattr(children, "run_child", run_child)
    return jobs
