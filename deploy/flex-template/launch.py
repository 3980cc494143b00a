"""The Flex Template's entry point (``FLEX_TEMPLATE_PYTHON_PY_FILE``): Dataflow's launcher runs it with the
template's parameters and the job's pipeline options; it checks the requirements, submits the streaming job and
returns (``inference_pipeline.jobs.deploy.flex_template_main``)."""
import logging
import sys

from inference_pipeline.jobs.deploy import flex_template_main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(flex_template_main(sys.argv[1:]))
