"""`auxilio keys init|show`: create the gateway X25519 keypair, print the public key to hand out."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="keys_cmd", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="create the gateway keypair (private key mode 0600)")
    init.add_argument("--dir", help="keys directory (default $AUXILIO_KEYS_DIR or var/keys)")
    init.add_argument("--json", action="store_true", help="machine-readable output")
    show = sub.add_parser("show", help="print the gateway public key")
    show.add_argument("--dir", help="keys directory (default $AUXILIO_KEYS_DIR or var/keys)")
    show.add_argument("--pubkey", help="a public key file to show instead")
    show.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from auxilio import keys

    if args.keys_cmd == "init":
        priv_path, pub_path = keys.init_keys(args.dir)
        pub = keys.load_public_key(pub_path)
        info = {
            "private_key": str(priv_path),
            "public_key_file": str(pub_path),
            "public_key": keys.public_key_text(pub),
            "fingerprint": keys.fingerprint(pub),
        }
        if args.json:
            print(json.dumps(info))
        else:
            print(f"private key: {priv_path} (mode 0600; keep it on the gateway only)")
            print(f"public key:  {pub_path}  (copy this one to provisioning stations)")
            print(f"fingerprint: {info['fingerprint']}")
        return 0
    path = args.pubkey or (keys.keys_dir(args.dir) / keys.PUBLIC_KEY_FILE)
    pub = keys.load_public_key(path)
    if args.json:
        print(
            json.dumps(
                {"public_key": keys.public_key_text(pub), "fingerprint": keys.fingerprint(pub)}
            )
        )
    else:
        print(keys.public_key_text(pub))
        print(f"fingerprint: {keys.fingerprint(pub)}")
    return 0
