"""The worker `crawl2llm server` runs: Prefect's process worker, except that nothing a flow run or a
deployment says can change what it executes.

Prefect's process worker takes `command`, `env` and `working_dir` from the work pool's job template,
the deployment and the flow run, so anyone who may create a flow run may run any command as the
worker's user (`{"job_variables": {"command": "..."}}`). Here the work pool's template offers no such
variable (the server refuses a flow run that sets one: 422), and the worker does not trust the
template either: every run starts `python -m prefect.engine` in the project folder with the worker's
own environment, and only for a deployment of our flows (`flows.*` entrypoints) whose pull steps are
the ones prefect.yaml declares. A run that asks for more is refused before any process starts (Prefect marks it Crashed with the reason).
"""

from __future__ import annotations

import asyncio
import sys
import warnings
from pathlib import Path
from typing import Any

from prefect.workers.process import ProcessJobConfiguration, ProcessVariables, ProcessWorker

PROJECT_DIR = Path(__file__).resolve().parents[1]
# The only pull step a deployment of ours may have: prefect.yaml's, which starts runs in the project.
ALLOWED_PULL_STEPS = [
    {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $CRAWL2LLM_PROJECT_DIR }}"}}
]
ENTRYPOINT_PREFIX = "flows."


class RefusedRun(RuntimeError):
    """A flow run asks the worker for something it does not do (another command, entrypoint, pull step)."""


class SafeVariables(ProcessVariables):
    """The job variables a flow run may set: a name, labels and whether output is streamed. No
    `command`, `env` or `working_dir` (and no others: additionalProperties is false)."""


def base_job_template() -> dict[str, Any]:
    """The work pool's template: Prefect's process template without the variables that change what runs."""
    variables = SafeVariables.model_json_schema()
    variables.pop("title", None)
    for name in ("command", "env", "working_dir"):
        variables["properties"].pop(name, None)
    variables["additionalProperties"] = False
    return {
        "job_configuration": {"name": "{{ name }}", "labels": "{{ labels }}", "stream_output": "{{ stream_output }}"},
        "variables": variables,
    }


def check_deployment(deployment) -> None:
    """Refuse a run of anything but our flows, pulled the way prefect.yaml pulls them."""
    if deployment is None:
        raise RefusedRun("flow runs without a deployment are not run by the crawl2llm worker")
    entrypoint = deployment.entrypoint or ""
    if not entrypoint.startswith(ENTRYPOINT_PREFIX):
        raise RefusedRun(
            f"deployment {deployment.name!r}: entrypoint {entrypoint!r} is not a crawl2llm flow "
            f"({ENTRYPOINT_PREFIX}...)"
        )
    if (deployment.pull_steps or []) not in ([], ALLOWED_PULL_STEPS):
        raise RefusedRun(
            f"deployment {deployment.name!r}: pull steps {deployment.pull_steps!r} are not the ones "
            "prefect.yaml declares; register the deployments again with `crawl2llm server`"
        )


class SafeJobConfiguration(ProcessJobConfiguration):
    def prepare_for_flow_run(
        self, flow_run, deployment=None, flow=None, work_pool=None, worker_name=None, worker_id=None
    ) -> None:
        check_deployment(deployment)
        asked = sorted(set(flow_run.job_variables or {}) & {"command", "env", "working_dir"})
        if asked:
            raise RefusedRun(
                f"flow run {flow_run.name!r} sets job variables {asked}, which the crawl2llm worker does not take"
            )
        # Prefect's engine command, the worker's environment plus the run's ids, the project folder:
        # whatever the template, the deployment or the run said.
        self.command, self.env, self.working_dir = None, {}, PROJECT_DIR
        super().prepare_for_flow_run(flow_run, deployment, flow, work_pool, worker_name, worker_id=worker_id)


with warnings.catch_warnings():  # same dispatch key as ProcessWorker: this process uses ours
    warnings.simplefilter("ignore")

    class SafeProcessWorker(ProcessWorker):
        type = "process"
        job_configuration = SafeJobConfiguration
        job_configuration_variables = SafeVariables

        @classmethod
        def get_default_base_job_template(cls) -> dict[str, Any]:
            return base_job_template()


async def _main(pool: str) -> None:
    worker = SafeProcessWorker(work_pool_name=pool, create_pool_if_not_found=False)
    await worker.start(printer=lambda *a, **k: print(*a, flush=True))


if __name__ == "__main__":
    try:
        asyncio.run(_main(sys.argv[1]))
    except KeyboardInterrupt:
        pass
