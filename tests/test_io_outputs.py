"""io/outputs.py: output names, including names too long for the file system once a suffix is added."""

from __future__ import annotations

import os

from gradcam_cli.io.outputs import output_name, thumbnail_name


def test_output_names_mirror_the_input_path() -> None:
    assert output_name("sub/a.jpg", 3, several=False) == "sub/a.jpg.png"
    assert output_name("sub/a.jpg", 3, several=True) == "sub/a.jpg.cls3.png"
    assert output_name("sub/a.jpg", 3, several=False, suffix=".jpg") == "sub/a.jpg.jpg"
    assert thumbnail_name("sub/a.jpg") == "thumbnails/sub/a.jpg.jpg"


def test_a_component_too_long_with_its_suffix_is_hash_shortened() -> None:
    long_name = "é" * 120 + ".jpg"  # 244 bytes in UTF-8
    names = {output_name(f"sub/{long_name}", k, several=True) for k in range(3)}
    assert len(names) == 3
    for name in names:
        folder, _, file_name = name.rpartition("/")
        assert folder == "sub" and len(os.fsencode(file_name + ".feature.npy")) <= 255 + 4
        file_name.encode("utf-8")  # cut at a character boundary
    assert output_name(long_name, 0, False) == output_name(long_name, 0, False)  # deterministic
    assert output_name(long_name, 0, False) != output_name(long_name[:-5] + "x.jpg", 0, False)
    assert len(os.fsencode(thumbnail_name(long_name).split("/")[-1])) <= 255


def test_a_folder_component_longer_than_a_file_name_is_shortened() -> None:
    name = output_name("x" * 300 + "/a.jpg", 0, False)
    folder, _, rest = name.partition("/")
    assert len(folder) <= 255 and rest == "a.jpg.png"
