"""`lmscope studio`: the local web studio (FastAPI + uvicorn), bound to 127.0.0.1 by default."""

from __future__ import annotations

import ipaddress

import click

from ._common import device_option, dtype_option, emit_json, json_option, load_model, model_argument


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def register(cli: click.Group) -> None:
    cli.add_command(studio)


@click.command()
@model_argument
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback only by default).")
@click.option("--allow-remote", is_flag=True, help="Allow a non-loopback --host: anyone who reaches it can run the model.")
@click.option("--atlas", "atlas_path", type=click.Path(dir_okay=False),
              help="Neuron atlas for search (default: the one `lmscope atlas build MODEL` writes).")
@json_option
@device_option
@dtype_option
def studio(model: str, port: int, host: str, allow_remote: bool, atlas_path: str | None, as_json: bool,
           device: str, dtype: str) -> None:
    """Serve the web studio for MODEL at http://127.0.0.1:8765 (next token, generate, lens, neurons)."""
    if not is_loopback(host) and not allow_remote:
        raise click.UsageError(
            f"--host {host} is not a loopback address: the studio would serve the model to the network. "
            "Use --host 127.0.0.1, or add --allow-remote if that is what you want."
        )
    import uvicorn

    from lmscope.web.app import LOCAL_HOSTS, create_app

    lm = load_model(model, device, dtype)
    hosts = None if allow_remote else LOCAL_HOSTS  # a remote client sends its own Host header
    app = create_app(model, model=lm, atlas_path=atlas_path, allowed_hosts=hosts)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    if as_json:
        emit_json({"model": lm.name, "url": url, "host": host, "port": port})
    else:
        click.echo(f"lmscope studio: {lm.name} at {url} (Ctrl+C stops it)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
