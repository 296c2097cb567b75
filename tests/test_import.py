import subprocess
import sys


def test_import_is_light():
    """`import autocompress` must not pull in ray, mlflow, transformers (nor torch)."""
    code = ("import sys, autocompress; p = autocompress.CompressionPlan({}); "
            "heavy = [m for m in ('ray', 'mlflow', 'transformers', 'torch', 'optuna') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_lazy_names_resolve():
    import autocompress

    assert callable(autocompress.apply_plan) and callable(autocompress.load_model)
    assert "apply_plan" in dir(autocompress)
