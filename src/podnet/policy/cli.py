"""`podnet policy apply|delete|list` and `podnet label pod|namespace`: the cluster's
NetworkPolicies and the labels they select by, in the datastore of a cluster (`--etcd`) or of
a lab (`--lab`). Every input is validated before anything is written."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from podnet.datastore.args import add_args, from_args
from podnet.errors import UserError
from podnet.policy import k8s, store
from podnet.policy.model import PROTOCOLS, Policy

if TYPE_CHECKING:
    from podnet.cli import Parser

MAX_FILE = 4 << 20  # bytes of YAML one apply reads


@contextlib.contextmanager
def _opened(args: argparse.Namespace) -> Iterator[store.KV]:
    """The datastore `--etcd` names, else the lab's etcd (used inside its namespace)."""
    from podnet.datastore.etcd import EtcdStore

    if args.etcd is not None:
        if args.lab_given:
            raise UserError("--lab and --etcd name two clusters", "give one of them")
        opened = from_args(args)
        if not isinstance(opened, EtcdStore):
            raise UserError("policies live in etcd, not in a file store",
                            "give --etcd http(s)://HOST:PORT")
        try:
            yield opened
        finally:
            opened.close()
        return
    from podnet.lab.lab import Lab, ns_path, status
    from podnet.netlink import netns

    lab = Lab.load(args.lab)
    with netns.entered(ns_path(status(lab)["etcd"]["netns"])):
        lab_store = lab.etcd_store()
        try:
            yield lab_store
        finally:
            lab_store.close()


def _read(path: str) -> str:
    try:
        if path == "-":
            text = sys.stdin.read(MAX_FILE + 1)
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read(MAX_FILE + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}", "give a YAML file of NetworkPolicy "
                        "documents") from None
    if len(text) > MAX_FILE:
        raise UserError(f"{path} is larger than {MAX_FILE >> 20} MiB",
                        "split it into several files")
    return text


def parse_documents(text: str, source: str) -> list[Policy]:
    """Every NetworkPolicy of a YAML stream, each validated; UserError naming the document
    and field of the first refusal."""
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise UserError(f"{source} is not YAML: {str(exc).splitlines()[0]}",
                        "fix the file; nothing was applied") from None
    if not docs:
        raise UserError(f"{source} holds no document", "give NetworkPolicy documents")
    policies: dict[str, Policy] = {}
    for i, doc in enumerate(docs, 1):
        try:
            policy = k8s.policy_from_k8s(doc)
        except k8s.Invalid as exc:
            raise UserError(f"{source} document {i}: {exc}",
                            "fix the document; nothing was applied") from None
        if policy.key in policies:
            raise UserError(f"{source} document {i}: {policy.key} is given twice",
                            "give each policy once; nothing was applied")
        policies[policy.key] = policy
    return list(policies.values())


def _cmd_apply(args: argparse.Namespace) -> int:
    policies = parse_documents(_read(args.file), args.file)
    with _opened(args) as kv:
        store.apply_policies(kv, policies)
    for p in policies:
        print(f"networkpolicy {p.key} applied")
    return 0


def _namespaced(value: str, what: str) -> str:
    namespace, slash, name = value.partition("/")
    if not slash:
        raise UserError(f"{what} {value[:80]!r} is not NAMESPACE/NAME",
                        "give the namespace too, e.g. default/web")
    try:
        k8s.check_dns_label(namespace, "namespace")
        k8s.check_name(name, "name")
    except k8s.Invalid as exc:
        raise UserError(f"{what} {value[:80]!r}: {exc}", "give NAMESPACE/NAME") from None
    return value


def _cmd_delete(args: argparse.Namespace) -> int:
    key = _namespaced(args.policy, "policy")
    with _opened(args) as kv:
        if not store.delete_policy(kv, key):
            raise UserError(f"no policy {key}", "`podnet policy list` shows them")
    print(f"networkpolicy {key} deleted")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    with _opened(args) as kv:
        objects = store.Objects()
        for key, value in kv.get_prefix(store.POLICIES).items():
            objects.update(key, value)
    policies = sorted(objects.policies.values(), key=lambda p: p.key)
    if args.json:
        print(json.dumps([k8s.to_k8s(p) for p in policies], indent=2))
        return 0
    for p in policies:
        selector = json.dumps(k8s.to_k8s(p)["spec"]["podSelector"], sort_keys=True)
        print(f"{p.key}  podSelector {selector}  {'+'.join(p.types)}  "
              f"{len(p.ingress)} ingress / {len(p.egress)} egress rules")
    if not policies:
        print("no policies: every pod is open in both directions")
    return 0


def label_changes(items: list[str], have: dict[str, str]) -> dict[str, str]:
    """`have` after KEY=VALUE (set) and KEY- (remove) items; UserError for a bad one."""
    out = dict(have)
    for item in items:
        try:
            if item.endswith("-") and "=" not in item:
                out.pop(k8s.check_label_key(item[:-1], "label key"), None)
                continue
            key, eq, value = item.partition("=")
            if not eq:
                raise k8s.Invalid("label", f"{item[:80]!r} is neither KEY=VALUE nor KEY-")
            out[k8s.check_label_key(key, "label key")] = k8s.check_label_value(
                value, f"label {key[:80]}")
        except k8s.Invalid as exc:
            raise UserError(str(exc), "give KEY=VALUE to set a label, KEY- to remove it; "
                            "nothing was changed") from None
    return out


def _port(item: str) -> tuple[str, tuple[str, int]]:
    name, _, spec = item.partition("=")
    protocol, _, number = spec.partition("/")
    try:
        k8s.port({"port": name, "protocol": protocol}, "--port", k8s.Budget())
        if not number.isdigit() or not 1 <= int(number) <= 65535 or protocol not in PROTOCOLS:
            raise k8s.Invalid("--port", f"{item[:80]!r} has no protocol and number")
    except k8s.Invalid as exc:
        raise UserError(str(exc), "give NAME=PROTOCOL/NUMBER, e.g. http=TCP/8080") from None
    return name, (protocol, int(number))


def _cmd_label_pod(args: argparse.Namespace) -> int:
    key = _namespaced(args.pod, "pod")
    ports = dict(_port(p) for p in args.port)
    label_changes(args.labels, {})  # refused before the store is opened
    with _opened(args) as kv:
        labels, have_ports = store.pod_meta(kv, key)
        labels = label_changes(args.labels, labels)
        store.set_pod_meta(kv, key, labels, have_ports | ports)
    print(f"pod {key} labeled {json.dumps(labels, sort_keys=True)}")
    return 0


def _cmd_label_namespace(args: argparse.Namespace) -> int:
    try:
        namespace = k8s.check_dns_label(args.namespace, "namespace")
    except k8s.Invalid as exc:
        raise UserError(str(exc), "give a namespace's name") from None
    label_changes(args.labels, {})  # refused before the store is opened
    with _opened(args) as kv:
        labels = label_changes(args.labels, store.namespace_labels(kv, namespace))
        store.set_namespace_labels(kv, namespace, labels)
    print(f"namespace {namespace} labeled {json.dumps(labels, sort_keys=True)}")
    return 0


class _Given(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.lab_given = True


def _where(p: argparse.ArgumentParser) -> None:
    from podnet.lab.cli import lab_name_arg

    p.add_argument("--lab", type=lab_name_arg, action=_Given,
                   default=os.environ.get("PODNET_LAB", "lab"),
                   help="the lab whose etcd to use (default: $PODNET_LAB, else lab)")
    add_args(p, default=None)
    p.set_defaults(lab_given=False)


def add_parsers(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("policy", help="the cluster's NetworkPolicies")
    psub = p.add_subparsers(dest="policy_command", required=True)
    c = psub.add_parser("apply", help="store (or replace) NetworkPolicy documents")
    c.add_argument("-f", "--file", required=True, help="YAML, one or many documents ('-': "
                                                       "standard input)")
    _where(c)
    c.set_defaults(func=_cmd_apply)
    c = psub.add_parser("delete", help="delete a policy")
    c.add_argument("policy", metavar="NAMESPACE/NAME")
    _where(c)
    c.set_defaults(func=_cmd_delete)
    c = psub.add_parser("list", help="list the policies")
    c.add_argument("--json", action="store_true", help="as NetworkPolicy objects")
    _where(c)
    c.set_defaults(func=_cmd_list)

    p = sub.add_parser("label", help="set or remove labels of pods and namespaces")
    lsub = p.add_subparsers(dest="label_command", required=True)
    c = lsub.add_parser("pod", help="a pod's labels (and named ports), by name: before or "
                                    "after the pod exists")
    c.add_argument("pod", metavar="NAMESPACE/NAME")
    c.add_argument("labels", nargs="*", metavar="KEY=VALUE|KEY-")
    c.add_argument("--port", action="append", default=[], metavar="NAME=PROTOCOL/NUMBER",
                   help="a named port of the pod, as its containers' ports name them")
    _where(c)
    c.set_defaults(func=_cmd_label_pod)
    c = lsub.add_parser("namespace", help="a namespace's labels")
    c.add_argument("namespace", metavar="NAMESPACE")
    c.add_argument("labels", nargs="*", metavar="KEY=VALUE|KEY-")
    _where(c)
    c.set_defaults(func=_cmd_label_namespace)
