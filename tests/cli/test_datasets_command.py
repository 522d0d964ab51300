"""``medmeta datasets`` lists the embedded data with licenses, without importing torch."""

from __future__ import annotations

import subprocess
import sys

from medmeta.cli import main


def test_datasets_lists_every_embedded_set_with_its_license(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("pbc_blood", "brain_tumor_mri", "knee_xray_kl"):
        assert name in out
    assert "CC BY 4.0" in out
    assert "chaos" not in out.lower()


def test_datasets_describes_one_and_rejects_unknown_names(capsys):
    assert main(["datasets", "pbc_blood"]) == 0
    assert "basophil" in capsys.readouterr().out
    assert main(["datasets", "no_such_data"]) == 2


def test_command_runs_as_a_module_without_torch():
    code = (
        "import sys, runpy\n"
        "class Block:\n"
        "    def find_spec(self, name, *a):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.argv = ['medmeta', 'datasets']\n"
        "runpy.run_module('medmeta', run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "pbc_blood" in proc.stdout


def test_training_on_an_assay_table_points_to_the_drug_screening_api(capsys, tmp_path):
    assert main(["train", "--data", "toxcast", "--out", str(tmp_path / "m")]) != 0
    err = capsys.readouterr().err
    assert "toxcast: an assay table of molecules" in err and "--family molecules" in err
