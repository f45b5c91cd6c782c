"""``hart-edu app``: the gradio app served on localhost and driven with gradio_client.

One server (a free port, gradio's own thread) serves the tiny HART tree built from the golden
fixtures; the images that come back over HTTP are compared pixel for pixel with the
pipeline's, and bad input must come back as one clear line (gr.Error), never a traceback.
"""

from __future__ import annotations

import socket
import sys

import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from hart_edu import cli
from hart_edu.app import MAX_APP_IMAGES, MAX_SEED, Studio, build_ui
from test_sampler import build_tiny_tree

PROMPT = "w1 w2 w3"
DEFAULTS = dict(seed=5, randomize_seed=False, cfg=4.5, more_smooth=True, residual=True, num_images=1,
                show_scales=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tree(golden_dir, tmp_path_factory):
    return build_tiny_tree(golden_dir, tmp_path_factory.mktemp("hart_tree"))


@pytest.fixture(scope="module")
def studio(tree) -> Studio:
    return Studio.load(tree)


@pytest.fixture(scope="module")
def client(studio):
    demo = build_ui(studio)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()
    with pytest.raises(OSError):  # shut down: nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def generate(client: Client, prompt=PROMPT, **kw):
    args = {**DEFAULTS, **kw}
    return client.predict(prompt, args["seed"], args["randomize_seed"], args["cfg"], args["more_smooth"],
                          args["residual"], args["num_images"], args["show_scales"], api_name="/generate")


def pixels(item: dict) -> np.ndarray:
    """A gallery item from gradio_client -> (H, W, 3) uint8, checking it is a PNG."""
    path = item["image"]["path"] if isinstance(item["image"], dict) else item["image"]
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.mode == "RGB"
        return np.asarray(image).copy()


def test_the_app_serves_the_pipelines_images(client, studio):
    gallery, seed, status = generate(client, num_images=2)
    size = studio.image_size
    got = [pixels(item) for item in gallery]
    assert [g.shape for g in got] == [(size, size, 3)] * 2 and seed == 5 and "seed 5" in status
    assert [item["caption"] for item in gallery] == ["image 1, seed 5", "image 2, seed 5"]
    expected = studio.pipe([PROMPT], seed=5, num_images_per_prompt=2, progress=False).images
    for g, e in zip(got, expected):
        assert g.tobytes() == np.asarray(e).tobytes()  # lossless and the same draw
    assert got[0].tobytes() != got[1].tobytes()
    other = pixels(generate(client, seed=6)[0][0])
    assert other.tobytes() != got[0].tobytes()


def test_the_gallery_shows_the_scales_building_up(client, studio):
    pns = studio.pipe.transformer.config.patch_nums
    gallery, _, status = generate(client, more_smooth=False, residual=False, show_scales=True)
    assert len(gallery) == len(pns) + 1 and "scale panels" in status
    assert gallery[0]["caption"] == f"image 1: scales 1-1 ({pns[0]}x{pns[0]}), codes only"
    assert gallery[-1]["caption"] == "image 1: final"
    panels = [pixels(item) for item in gallery]
    # codes only (no smoothing, no residual): all scales decoded = the final image
    assert panels[-2].tobytes() == panels[-1].tobytes()
    assert panels[0].tobytes() != panels[-1].tobytes()


def test_randomize_seed_draws_a_new_seed_and_reports_it(client):
    seeds = {generate(client, randomize_seed=True, seed=5)[1] for _ in range(2)}
    assert len(seeds) == 2 and all(0 <= s <= MAX_SEED for s in seeds)


@pytest.mark.parametrize("prompt, fields, fragment", [
    ("", {}, "prompt 0 is empty"),
    ("   \n ", {}, "prompt 0 is empty"),
    ("w1 " * 5000, {}, "more than the limit of 10,000"),
    (PROMPT, {"seed": -1}, "less than minimum"),  # the form's own bounds
    (PROMPT, {"num_images": MAX_APP_IMAGES + 1}, "greater than maximum"),  # the slider's own check
    (PROMPT, {"cfg": 1e9}, "greater than maximum"),
    (PROMPT, {"cfg": -1}, "less than minimum"),
])
def test_bad_input_is_one_clear_message(client, prompt, fields, fragment):
    with pytest.raises(AppError) as err:
        generate(client, prompt, **fields)
    message = str(err.value)
    assert fragment in message and "Traceback" not in message and "\n" not in message.strip()


def test_the_studio_checks_what_the_form_cannot(studio):
    """Values a caller of the API can send although the form would not (the studio's own checks)."""
    for fields, fragment in [({"num_images": 0}, "number of images"), ({"seed": None}, "seed"),
                             ({"seed": float("nan")}, "seed"), ({"seed": 1.5}, "seed"), ({"cfg": float("inf")}, "cfg"),
                             ({"cfg": "x"}, "guidance scale"), ({"seed": MAX_SEED + 1}, "seed")]:
        with pytest.raises(ValueError, match=fragment):
            studio.generate(PROMPT, **{**DEFAULTS, **fields})
    with pytest.raises(ValueError, match="must be text"):
        studio.generate(None)


def test_a_long_prompt_is_cut_to_the_text_encoders_length_and_says_so(client, studio):
    T = studio.pipe.text_encoder.max_length
    gallery, _, status = generate(client, " ".join(f"w{i}" for i in range(T + 5)))
    assert len(gallery) == 1 and f"more than max_length={T}" in status and "truncated" in status


# ------------------------------------------------------------------------------ the command


def test_app_command_registered_with_its_options():
    args = cli.build_parser().parse_args(["app"])
    assert (args.host, args.port, args.weights, args.safety_checker, args.safety_threshold) == (
        "127.0.0.1", 7860, None, None, 0.5)
    assert args.run.__module__ == "hart_edu.app"


def test_app_without_gradio_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert cli.main(["app", "--weights", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'hart-edu[app]'" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, fragment", [
    (["--port", "70000"], "--port 70000"),
    (["--host", "256.1.1.1"], "--host '256.1.1.1' is not a valid IP address or a name this machine can resolve"),
    (["--host", "192.0.2.1"], "--host 192.0.2.1 is not an address of this machine"),  # TEST-NET-1: never local
    (["--host", "::1"], "--host ::1 is an IPv6 address"),
    (["--host", ""], "is not a valid IP address"),
    (["--weights", "/nonexistent/hart"], "not found"),
    (["--safety-checker", "/nonexistent/shieldgemma"], "no config.json"),
])
def test_app_command_bad_input_is_one_line(tree, capsys, argv, fragment):
    argv = ["app", *argv] if "--weights" in argv else ["app", "--weights", str(tree), *argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "error:" in line] == [err.splitlines()[-1]]
    assert fragment in err and "Traceback" not in err


def test_app_on_a_port_in_use_says_so_before_loading(tree, capsys, monkeypatch):
    """Checked before the models load (it used to fail after, and ``--host 256.1.1.1`` blamed
    the port)."""
    import hart_edu.app

    def no_model(*args, **kwargs):
        raise AssertionError("the models were loaded for an address the app cannot listen on")

    monkeypatch.setattr(hart_edu.app.Studio, "load", no_model)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["app", "--weights", str(tree), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"hart-edu app: error: --port {port} is already in use on 127.0.0.1: "
                                        "choose another port"], err
    for argv in (["--host", "256.1.1.1"], ["--host", "192.0.2.1"]):
        assert cli.main(["app", "--weights", str(tree), *argv]) == 2
        assert "--host" in capsys.readouterr().err
