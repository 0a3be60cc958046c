"""Typed options of a spec for tests that call the library below the action layer directly."""

from changenet.calib.options import CalibrationOptions


def calibration_inputs(cfg):
    """(DataOptions, CalibrationDraw) of a spec: calibration_pairs' arguments."""
    options = CalibrationOptions.from_spec(cfg)
    return options.data, options.draw
