"""`lsc4rec cloud serve`, `cloud publish` and `cloud publish-llm` (registrar: imports nothing heavy at top level)."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path

from shared.cli import add_json_flag, emit, handler
from shared.config import load_config
from shared.data.dataset import load_dataset
from shared.data.splits import stream_split
from shared.errors import ConfigError
from shared.generator import generator_from_spec
from shared.manifest import read_manifest


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    serve = groups["cloud"].add_parser(
        "serve", help="serve candidates (LLM, popularity stand-in, or any registered generator) and device models "
                      "over gRPC",
        description="Start the cloud gRPC server: CandidateService (micro-batched generator), ModelService "
                    "(newest verified artifact under --models), grpc.health.v1 and reflection. Health reports "
                    "NOT_SERVING until the generator is loaded and warmed up. SIGTERM drains and exits 0.")
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--llm", type=Path, help="trained LLM generator folder (train llm output)")
    source.add_argument("--popularity", type=Path, metavar="DATA_DIR",
                        help="serve the popularity stand-in built from this prepared dataset folder (counts "
                             "exclude protocol B's stream and cloud lag: the last 13 items of each user)")
    source.add_argument("--generators", type=Path, metavar="GEN_DIR",
                        help="folder of generator versions written by `cloud publish-llm`: serve the newest valid "
                             "one (its catalogue must extend --data's) and switch to a newer one published while "
                             "running (scanned every generator_poll_s seconds, see --set; loaded and warmed up "
                             "before the switch; a bad one is refused with one log line and the current one stays)")
    source.add_argument("--generator", metavar="SPEC",
                        help="a registered generator, SCHEME[:ARG] (cloud/generators/: popularity, llm:FOLDER, ...), "
                             "over --data; it learns from what --popularity counts (protocol B's cloud view)")
    serve.add_argument("--data", type=Path, default=None,
                       help="prepared dataset folder the LLM was trained on (required with --llm, --generators and "
                            "--generator; its catalogue is checked; with --generators the served version's catalogue "
                            "must extend it)")
    serve.add_argument("--models", type=Path, default=None,
                       help="folder of published device artifacts (one subfolder per version; rescanned live)")
    serve.add_argument("--address", default=None, help="host:port to bind (default 127.0.0.1:50051; port 0 = any)")
    serve.add_argument("--replicas", default="1", metavar="N",
                       help="server processes on --address, 1..64 or auto (one per core; default 1): each a whole "
                            "server with its own generator and batcher, sharing the port (SO_REUSEPORT: the kernel "
                            "spreads connections), under one parent that restarts a replica that exits (with back-off, "
                            "--set replicas.KEY=VALUE), reports SERVING only once all are ready, drains them all on "
                            "SIGTERM and replaces them one at a time on SIGHUP; generator_threads 0 becomes "
                            "cores/N each; with --metrics-port P the parent's metrics are on P and replica k's on "
                            "P+1+k")
    serve.add_argument("--config", type=Path, default=None, help="TOML file of ServerConfig (cloud/presets/)")
    serve.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set batch.max_batch_size=16 (repeatable)")
    serve.add_argument("--token-file", type=Path, default=None,
                       help="file holding the bearer token every call must carry (health checks exempt)")
    serve.add_argument("--tls-cert", type=Path, default=None, help="server certificate chain (PEM); needs --tls-key")
    serve.add_argument("--tls-key", type=Path, default=None, help="server private key (PEM); needs --tls-cert")
    serve.add_argument("--tls-client-ca", type=Path, default=None,
                       help="CA certificate (PEM) that client certificates must be signed by: turns on mutual TLS")
    serve.add_argument("--metrics-port", type=int, default=None,
                       help="expose Prometheus /metrics on 127.0.0.1:PORT (0 = any free port; with --replicas N, "
                            "ports PORT..PORT+N)")
    serve.add_argument("--port-file", type=Path, default=None,
                       help="write the bound port to this file once the server is SERVING")
    serve.add_argument("--log-level", default="INFO", help="logging level (DEBUG logs every call)")
    serve.set_defaults(func=handler("cloud.cli", "serve_main"))

    publish = groups["cloud"].add_parser(
        "publish", help="publish an exported device artifact folder into a models folder (atomic)",
        description="Verify an artifact folder (manifest.json + file, as written by `export`) and copy it "
                    "into the models folder under <format>-<version>, renamed atomically.")
    publish.add_argument("artifact", type=Path, help="artifact folder holding manifest.json and the model file")
    publish.add_argument("--models", type=Path, required=True, help="models folder the server serves")
    add_json_flag(publish)
    publish.set_defaults(func=handler("cloud.cli", "publish_main"))

    grow = groups["cloud"].add_parser(
        "publish-llm", help="publish a text-grounded LLM as a generator version, grown to a catalogue with new items",
        description="Write a new generator version folder into --generators (staged, then renamed; a server "
                    "started with `cloud serve --generators` switches to it). --data must extend the catalogue the "
                    "--llm folder serves: the same items with the same ids in the same order, new items appended, "
                    "each with text. Each new item's token is proj(its text vector) with no id residual, exactly "
                    "what an item no training interaction taught gets, and it counts as untrained for cold_boost. "
                    "Bad input is refused (exit code 2, one line naming the file and field) before anything is "
                    "written; an id-only generator cannot grow.")
    grow.add_argument("--llm", type=Path, required=True,
                      help="text-grounded LLM folder: a `train llm` output (e.g. --preset compact-text) or a version "
                           "folder written by this command")
    grow.add_argument("--data", type=Path, required=True,
                      help="prepared dataset folder of the grown catalogue (the --llm folder's items first, new ones "
                           "after)")
    grow.add_argument("--generators", type=Path, required=True,
                      help="folder of generator versions (created if missing); the new one goes into llm-<version>/")
    vectors = grow.add_mutually_exclusive_group(required=True)
    vectors.add_argument("--vectors", type=Path, default=None,
                         help="item vectors of the grown catalogue (.npz from `embed items --whitening-from "
                              "LLM/item_text.npz`): its old items' rows must equal the model's")
    vectors.add_argument("--encoder", default=None,
                         help="embed the new items now with this encoder (smollm2-135m, minilm, folder:PATH; the one "
                              "that made the model's vectors), with their pooling, prompt and whitening; cached, so "
                              "texts embedded before cost nothing")
    grow.add_argument("--batch-size", type=int, default=16, help="with --encoder: texts per forward pass")
    add_json_flag(grow)
    grow.set_defaults(func=handler("cloud.cli", "publish_llm_main"))


def _serve_versions(server, args: argparse.Namespace, config) -> None:
    """--generators: serve the newest valid version now, then watch the folder for newer ones."""
    from cloud.generator_versions import GeneratorWatcher
    from shared.data.catalog import CatalogRef

    if args.data is None:
        raise ConfigError("--data", None, "the dataset folder the generators' catalogue extends is required with "
                                          "--generators")
    watcher = GeneratorWatcher(server, args.generators, CatalogRef.of(load_dataset(args.data).items),
                               config.generator_poll_s, config.generator_threads)
    server.on_stop(watcher.stop)
    watcher.start()


def _load_generator(args: argparse.Namespace, threads: int):
    """The served generator through the registry (shared.generator.GENERATORS): --llm FOLDER is the spec
    llm:FOLDER over --data, --popularity DATA_DIR is popularity over DATA_DIR."""
    if args.popularity is None and args.data is None:
        flag, what = ("--llm", "the LLM was trained on") if args.llm is not None else ("--generator", "to serve")
        raise ConfigError("--data", None, f"the dataset folder {what} is required with {flag}")
    dataset = load_dataset(args.popularity if args.popularity is not None else args.data)
    if args.llm is not None:  # trained already: nothing to learn from the dataset
        return generator_from_spec(f"llm:{args.llm}", dataset, threads=threads)
    # Others learn from what the cloud has seen under protocol B (no stream event), so a replay stays leak-free.
    spec = "popularity" if args.popularity is not None else args.generator
    return generator_from_spec(spec, dataset, stream_split(dataset).cloud_seen, threads)


def _tls(args: argparse.Namespace) -> tuple[bytes, bytes] | None:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert/--tls-key", None, "give both or neither")
    if args.tls_cert is None:
        return None
    return args.tls_key.read_bytes(), args.tls_cert.read_bytes()


def serve_main(args: argparse.Namespace, replica=None) -> int:
    """Start, load and warm the generator, serve until SIGTERM/SIGINT, drain, exit 0.

    `--replicas N` > 1: supervise N replicas instead (cloud.replicas); `replica` is set in each of them (its link to
    the parent: SO_REUSEPORT, health held until the parent says every replica is ready, stop when the parent dies)."""
    from cloud.replicas import LOG_FORMAT, parse_replicas
    from cloud.server import ServerConfig, create_server  # grpc and the servicers: only when serving

    count = parse_replicas(args.replicas)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT if replica is None else replica.log_format)
    config = load_config(ServerConfig, args.config, args.overrides)
    token = None
    if args.token_file is not None:
        token = args.token_file.read_text().strip()
        if not token:
            raise ConfigError("--token-file", str(args.token_file), "the file is empty")
    tls = _tls(args)
    if count > 1 and replica is None:
        from cloud.replicas import supervise

        if args.popularity is None and args.data is None:  # what every replica would refuse: refuse it once
            flag = "--llm" if args.llm else "--generators" if args.generators else "--generator"
            raise ConfigError("--data", None, f"the dataset folder is required with {flag}")
        if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535 - count:
            raise ConfigError("--metrics-port", args.metrics_port, f"must be in 0..{65535 - count} with --replicas "
                                                                   f"{count} (ports PORT..PORT+{count})")
        return supervise(args, count, config)
    stop = threading.Event() if replica is None else replica.stop
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if replica is not None:  # SIGHUP is the parent's (a rolling replacement), not the replica's
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    generator = None
    if replica is not None and args.generators is None:  # a replica joins the shared port ready to answer
        generator = _load_generator(args, config.generator_threads)
    server, port = create_server(config, None, args.models, address=args.address, token=token,
                                 tls=tls, metrics_port=args.metrics_port,
                                 tls_client_ca=args.tls_client_ca.read_bytes() if args.tls_client_ca else None,
                                 reuse_port=replica is not None, hold_serving=replica is not None)
    try:
        if replica is not None:
            replica.attach(server)
        if not stop.is_set() and args.generators is not None:
            _serve_versions(server, args, config)
        elif not stop.is_set():
            if generator is None:
                generator = _load_generator(args, config.generator_threads)
            server.set_generator(generator)
        if replica is not None and not stop.is_set():
            replica.ready(port, getattr(server, "metrics_port", None))
        if args.port_file is not None and not stop.is_set():
            tmp = args.port_file.with_suffix(".tmp")
            tmp.write_text(f"{port}\n")
            tmp.replace(args.port_file)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop(None if replica is None else replica.grace(config))
    return 0


def publish_main(args: argparse.Namespace) -> int:
    from cloud.registry import publish  # grpc (through cloud.errors): only when publishing

    folder = publish(args.artifact, args.models)
    manifest = read_manifest(folder)
    emit({"folder": str(folder), "version": manifest.version, "format": manifest.format.value,
          "sha256": manifest.sha256}, args.json, title="published")
    return 0


def publish_llm_main(args: argparse.Namespace) -> int:
    from cloud.llm.growth import publish  # torch and transformers: only when publishing

    if args.batch_size < 1:
        raise ConfigError("--batch-size", args.batch_size, "must be at least 1")
    folder, added = publish(args.llm, args.data, args.generators, vectors=args.vectors, encoder=args.encoder,
                            batch_size=args.batch_size)
    record = json.loads((folder / "generator.json").read_text())
    emit({"folder": str(folder), "version": record["version"], "num_items": record["num_items"],
          "vocab_hash": record["vocab_hash"], "new_items": added, "grown_from": record["grown_from"]["version"]},
         args.json, title="published generator")
    return 0


if __name__ == "__main__":  # a replica of `cloud serve --replicas N` (cloud.replicas starts it)
    import sys

    from cloud.replicas import replica_main

    if sys.argv[1:] != ["--replica"]:
        sys.exit("python -m cloud.cli runs a replica of `lsc4rec cloud serve --replicas N`, which starts it")
    sys.exit(replica_main(serve_main))
