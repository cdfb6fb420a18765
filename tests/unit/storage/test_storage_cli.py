"""`shardserve download`: the result on stdout, user errors as one line (no traceback)."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import zipfile

from shardserve import cli


def run(capsys, *argv):
    code = cli.main(["download", *argv])
    out, err = capsys.readouterr()
    return code, out.strip(), err


def test_download_s3_prefix_to_a_directory(put_model, tmp_path, capsys):
    bucket = put_model({"config.json": b"{}", "w.bin": b"w" * 3_000_000})
    dest = tmp_path / "out"
    code, out, _ = run(
        capsys, f"s3://{bucket}/model", "--to", str(dest), "--part-size-mb", "1", "--no-progress"
    )
    assert code == 0 and out == str(dest)
    assert (dest / "w.bin").read_bytes() == b"w" * 3_000_000
    assert run(capsys, f"s3://{bucket}/model", "--to", str(dest))[:2] == (
        0,
        str(dest),
    )  # done already


def test_unpack_a_local_archive(tmp_path, capsys):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("serving.properties")
        info.size = 14
        tf.addfile(info, io.BytesIO(b"engine=Python\n"))
    code, out, _ = run(capsys, str(archive), "--to", str(tmp_path / "m"))
    assert code == 0 and (tmp_path / "m" / "serving.properties").read_text() == "engine=Python\n"


def test_unwritable_cache_is_a_user_error(tmp_path, capsys):
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("config.json", "{}")
    (tmp_path / "a-file").write_text("")
    code, _, err = run(capsys, str(archive), "--cache-dir", str(tmp_path / "a-file" / "cache"))
    assert code == 2 and "cannot write" in err and "Traceback" not in err


def test_user_errors_are_one_line(s3env, tmp_path, capsys):
    code, _, err = run(capsys, "s3://no-such-bucket-cli/m", "--to", str(tmp_path / "x"))
    assert code == 2 and err.startswith(
        "shardserve download: error: listing s3://no-such-bucket-cli/m"
    )
    code, _, err = run(capsys, str(tmp_path), "--to", str(tmp_path / "y"))
    assert code == 2 and "is already a local model directory" in err
    assert "Traceback" not in err


def test_the_command_module_does_not_import_boto3():
    probe = "import sys, shardserve.storage.commands; print('boto3' in sys.modules)"
    assert (
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )
