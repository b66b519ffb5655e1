"""`lmscope studio`: the local web studio (FastAPI + uvicorn), bound to 127.0.0.1 by default."""

from __future__ import annotations

import click

from lmscope.web.guard import is_loopback

from ._common import (
    device_option,
    dtype_option,
    emit_json,
    json_option,
    load_model,
    model_argument,
)

__all__ = ["is_loopback", "studio"]


def _check_port(host: str, port: int) -> None:
    """Fail with a usage error when (host, port) cannot be bound (taken, or not an address here)."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise click.UsageError(f"Port {port} on {host} is taken (another studio or server is using it); "
                                       f"pass another port, e.g. --port {port + 1 if port < 65535 else 8765}.") from None
            raise click.UsageError(f"Cannot listen on {host}:{port}: {e.strerror or e}.") from None


@click.command()
@model_argument
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind (loopback only by default: 127.x.y.z, ::1 or localhost).")
@click.option("--allow-remote", is_flag=True, help="Allow a non-loopback --host: anyone who reaches it can run the model.")
@click.option("--atlas", "atlas_path", type=click.Path(dir_okay=False),
              help="Neuron atlas for search (default: the one `lmscope atlas build MODEL` writes).")
@click.option("--vectors-dir", "vector_dirs", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="Folder vector files (Generate's edits, the Steering and Function vectors tabs) and neuron "
                   "recordings may be read from, and vectors saved to (repeatable; default: the working directory).")
@click.option("--sae-dir", "sae_dirs", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="Folder the SAEs tab may read SAEs from (repeatable; default: the working directory).")
@click.option("--lre-dir", "lre_dirs", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="Folder the Relations tab may read LRE files from and save them to (repeatable; default: the "
                   "working directory).")
@json_option
@device_option
@dtype_option
def studio(model_name: str, port: int, host: str, allow_remote: bool, atlas_path: str | None,
           vector_dirs: tuple[str, ...], sae_dirs: tuple[str, ...], lre_dirs: tuple[str, ...], as_json: bool,
           device: str, dtype: str) -> None:
    """Serve the web studio for MODEL at http://127.0.0.1:8765 (next token, generate, lens, neurons)."""
    if not is_loopback(host) and not allow_remote:
        raise click.UsageError(
            f"--host {host} is not a loopback address: the studio would serve the model to the network. "
            "Use --host 127.0.0.1, or add --allow-remote if that is what you want."
        )
    _check_port(host.strip("[]"), port)  # before the model load: a taken port costs nothing
    import uvicorn

    from lmscope.web.app import LOCAL_HOSTS, create_app

    model = load_model(model_name, device, dtype)
    # Loopback: the Host check accepts every loopback address and localhost, so the URL printed
    # below works for any --host that passed the test above. Remote: clients send their own names.
    hosts = None if allow_remote else LOCAL_HOSTS
    app = create_app(model_name, model=model, atlas_path=atlas_path, allowed_hosts=hosts,
                     vector_dirs=list(vector_dirs) or None, sae_dirs=list(sae_dirs) or None,
                     lre_dirs=list(lre_dirs) or None)
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    if as_json:
        emit_json({"model": model.name, "url": url, "host": host, "port": port})
    else:
        click.echo(f"lmscope studio: {model.name} at {url} (Ctrl+C stops it)")
    uvicorn.run(app, host=host.strip("[]"), port=port, log_level="warning")
