"""Specs: study and probe YAML to validated, frozen dataclasses that hold their models.

    study.py     Study, study_from_dict, load_study (configs/study/)
    probe.py     Probe, probe_from_dict, load_probe (configs/probe/)
    compare.py   compare_study: fit configs as a one-size study (`postformer compare`)
    models.py    the ladder's rungs, an arch at a size (Shape), parameter matching
    executor.py  the executor section, shared by studies and probes
    checks.py    StudyError and the validators every spec reader uses
"""

from .checks import StudyError, n_devices, read_spec
from .compare import compare_study
from .models import Shape, ladder_sizes
from .probe import Probe, load_probe, probe_from_dict, setting_label
from .study import Study, load_study, study_from_dict

__all__ = ["Probe", "Shape", "Study", "StudyError", "compare_study", "ladder_sizes", "load_probe",
           "load_study", "n_devices", "probe_from_dict", "read_spec", "setting_label",
           "study_from_dict"]
