"""Evaluation: labels + scores -> the figures a clinical audit asks for (``cxrkit eval``).

Pure numbers, no torch: :mod:`~cxrkit.evaluate.metrics` (AUROC, AP, sensitivity at a fixed
specificity, sort-based, checked against scikit-learn), :mod:`~cxrkit.evaluate.bootstrap`
(patient-resampled intervals), :mod:`~cxrkit.evaluate.delong` (DeLong intervals and tests),
:mod:`~cxrkit.evaluate.thresholds` (per-finding operating points),
:mod:`~cxrkit.evaluate.calibration`, :mod:`~cxrkit.evaluate.results` (everything for one
model, subgroups, tables), :mod:`~cxrkit.evaluate.predictions` (other tools' CSVs matched to
labels), :mod:`~cxrkit.evaluate.report` and :mod:`~cxrkit.evaluate.plots` (``report.html``),
:mod:`~cxrkit.evaluate.audit` (the shortcut audit of ``eval --audit``: metadata-only
baseline, strata; :mod:`~cxrkit.evaluate.probe` its cross-validated regressions and the
embedding probe, :mod:`~cxrkit.evaluate.audit_output` ``audit.csv``,
:mod:`~cxrkit.evaluate.audit_report` its report section, :mod:`~cxrkit.evaluate.html` the
report's HTML blocks), :mod:`~cxrkit.evaluate.runs` (``eval`` and ``compare`` end to end).

Evaluating predictions imports neither torch nor timm; only
:func:`~cxrkit.evaluate.runs.evaluate_checkpoint` loads a model, through :mod:`cxrkit.deploy`.
"""

from cxrkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "audit": ["shortcut_audit"],
        "bootstrap": ["bootstrap_ci"],
        "calibration": ["Calibrator", "fit_calibrator"],
        "delong": ["delong_ci", "delong_test"],
        "metrics": ["average_precision", "roc_auc", "summarize"],
        "results": ["evaluate", "subgroups"],
        "runs": ["EvalOptions", "evaluate_checkpoint", "evaluate_predictions"],
        "thresholds": ["tune_thresholds"],
    },
)
