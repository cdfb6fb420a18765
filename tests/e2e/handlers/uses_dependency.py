"""A handler that imports a package its artifact's requirements.txt installs."""

import tinydep_e2e
from djl_python import Input, Output


def handle(inputs: Input):
    if inputs.is_empty():
        return None
    return Output().add_as_json({"value": tinydep_e2e.VALUE})
