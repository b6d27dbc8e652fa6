"""Kubernetes objects into podnet's policy model, validated as the API server validates them:
NetworkPolicy (networking.k8s.io/v1), and the Namespace and Pod fields policy reads. Every
refusal names the field path. `podnet policy apply` goes through here, and so would a watcher
of the Kubernetes API; `to_k8s` writes a policy back in the API's form (what podnet stores).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from podnet.policy.model import (
    EGRESS,
    INGRESS,
    PROTOCOLS,
    IPBlock,
    Peer,
    Pod,
    Policy,
    Port,
    Requirement,
    Rule,
    Selector,
)

API_VERSION, KIND = "networking.k8s.io/v1", "NetworkPolicy"
# podnet's bounds on one policy, beyond which it is refused rather than compiled: rules,
# peers, ports and selector terms together (the API server has none; a policy this size is a
# mistake or an attack, and each item costs every node rules and sets).
MAX_ITEMS = 2000
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_PORT_NAME = re.compile(r"[a-z0-9]([a-z0-9]|-(?=[a-z0-9]))*")


class Invalid(ValueError):
    """A field the API server would refuse: `path: what is wrong`."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def _fields(obj: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise Invalid(path, "must be an object")
    for key in obj:
        if key not in allowed:
            raise Invalid(f"{path}.{key}" if path else str(key), "unknown field")
    return obj


def _list(obj: Any, path: str) -> list[Any]:
    if obj is None:
        return []
    if not isinstance(obj, list):
        raise Invalid(path, "must be a list")
    return obj


def _string(obj: Any, path: str) -> str:
    if not isinstance(obj, str):
        raise Invalid(path, "must be a string")
    return obj


def _matching(value: Any, path: str, pattern: re.Pattern[str], limit: int, what: str) -> str:
    text = _string(value, path)
    if len(text) > limit or not pattern.fullmatch(text):
        raise Invalid(path, f"{text[:70]!r} is not {what}")
    return text


def check_dns_label(value: Any, path: str) -> str:
    return _matching(value, path, _DNS_LABEL, 63, "a DNS label (at most 63 of a-z, 0-9 and "
                     "'-', starting and ending with a letter or digit)")


def check_name(value: Any, path: str) -> str:
    """A DNS subdomain, as object names are."""
    return _matching(value, path, _DNS_SUBDOMAIN, 253, "a valid name (lowercase DNS "
                     "subdomain, at most 253 characters)")


def check_label_key(value: Any, path: str) -> str:
    text = _string(value, path)
    prefix, _, name = text.rpartition("/")
    if (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix))) or (
            len(name) > 63 or not _NAME.fullmatch(name)):
        raise Invalid(path, f"{text[:70]!r} is not a label key ([prefix/]name: a name of at "
                      "most 63 of A-Z, a-z, 0-9, '-', '_' and '.', starting and ending with "
                      "a letter or digit)")
    return text


def check_label_value(value: Any, path: str) -> str:
    text = _string(value, path)
    if len(text) > 63 or (text and not _NAME.fullmatch(text)):
        raise Invalid(path, f"{text[:70]!r} is not a label value (at most 63 of A-Z, a-z, "
                      "0-9, '-', '_' and '.', starting and ending with a letter or digit)")
    return text


def labels(obj: Any, path: str) -> dict[str, str]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise Invalid(path, "must be an object")
    return {check_label_key(k, f"{path}[{k!s:.70}]"): check_label_value(v, f"{path}[{k!s:.70}]")
            for k, v in obj.items()}


class Budget:
    """Counts a policy's items against MAX_ITEMS."""

    def __init__(self) -> None:
        self.used = 0

    def take(self, path: str, count: int = 1) -> None:
        self.used += count
        if self.used > MAX_ITEMS:
            raise Invalid(path, f"the policy has more than {MAX_ITEMS} rules, peers, ports and "
                          "selector terms together (split it into several policies)")


def selector(obj: Any, path: str, budget: Budget) -> Selector:
    if obj is None:
        obj = {}
    fields = _fields(obj, path, ("matchLabels", "matchExpressions"))
    match = labels(fields.get("matchLabels"), f"{path}.matchLabels")
    budget.take(path, len(match))
    exprs = []
    for i, item in enumerate(_list(fields.get("matchExpressions"), f"{path}.matchExpressions")):
        p = f"{path}.matchExpressions[{i}]"
        budget.take(p)
        expr = _fields(item, p, ("key", "operator", "values"))
        key = check_label_key(expr.get("key"), f"{p}.key")
        op = expr.get("operator")
        if op not in OPERATORS:
            raise Invalid(f"{p}.operator", f"{op!r} is not one of {', '.join(OPERATORS)}")
        values = [check_label_value(v, f"{p}.values[{j}]")
                  for j, v in enumerate(_list(expr.get("values"), f"{p}.values"))]
        budget.take(f"{p}.values", len(values))
        if op in ("In", "NotIn") and not values:
            raise Invalid(f"{p}.values", f"must be non-empty when operator is {op}")
        if op in ("Exists", "DoesNotExist") and values:
            raise Invalid(f"{p}.values", f"must be empty when operator is {op}")
        exprs.append(Requirement(key, op, tuple(values)))
    return Selector(tuple(sorted(match.items())), tuple(exprs))


def _cidr(value: Any, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    text = _string(value, path)
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        raise Invalid(path, f"{text[:70]!r} is not a CIDR with its host bits zero") from None


def ip_block(obj: Any, path: str, budget: Budget) -> IPBlock:
    fields = _fields(obj, path, ("cidr", "except"))
    if "cidr" not in fields:
        raise Invalid(f"{path}.cidr", "required")
    cidr = _cidr(fields["cidr"], f"{path}.cidr")
    excepts = []
    for i, item in enumerate(_list(fields.get("except"), f"{path}.except")):
        p = f"{path}.except[{i}]"
        budget.take(p)
        net = _cidr(item, p)
        if net.version != cidr.version or not net.subnet_of(cidr) or net == cidr:  # type: ignore[arg-type]
            raise Invalid(p, f"{net} is not a strict subset of cidr {cidr}")
        excepts.append(net)
    return IPBlock(cidr, tuple(excepts))


def peer(obj: Any, path: str, budget: Budget) -> Peer:
    budget.take(path)
    fields = _fields(obj, path, ("podSelector", "namespaceSelector", "ipBlock"))
    if not fields:
        raise Invalid(path, "must specify a peer (podSelector, namespaceSelector or ipBlock)")
    if "ipBlock" in fields:
        if len(fields) > 1:
            raise Invalid(path, "may not specify more than 1 peer type (ipBlock stands alone)")
        return Peer(ip_block=ip_block(fields["ipBlock"], f"{path}.ipBlock", budget))
    pods = (selector(fields["podSelector"], f"{path}.podSelector", budget)
            if "podSelector" in fields else None)
    namespaces = (selector(fields["namespaceSelector"], f"{path}.namespaceSelector", budget)
                  if "namespaceSelector" in fields else None)
    return Peer(pods, namespaces)


def port(obj: Any, path: str, budget: Budget) -> Port:
    budget.take(path)
    fields = _fields(obj, path, ("protocol", "port", "endPort"))
    protocol = fields.get("protocol", "TCP")
    if protocol not in PROTOCOLS:
        raise Invalid(f"{path}.protocol", f"{protocol!r} is not one of {', '.join(PROTOCOLS)}")
    number: int | str | None = fields.get("port")
    if isinstance(number, bool) or not (number is None or isinstance(number, int | str)):
        raise Invalid(f"{path}.port", "must be a number or a port name")
    if isinstance(number, int) and not 1 <= number <= 65535:
        raise Invalid(f"{path}.port", f"{number} is not between 1 and 65535")
    if isinstance(number, str) and (len(number) > 15 or not _PORT_NAME.fullmatch(number)
                                    or not re.search("[a-z]", number)):
        raise Invalid(f"{path}.port", f"{number[:70]!r} is not a port name (at most 15 of "
                      "a-z, 0-9 and '-', with a letter, no '-' at an end or twice in a row)")
    end = fields.get("endPort")
    if end is not None:
        if isinstance(end, bool) or not isinstance(end, int):
            raise Invalid(f"{path}.endPort", "must be a number")
        if not isinstance(number, int):
            raise Invalid(f"{path}.endPort", "may not be specified when port is not a number")
        if not number <= end <= 65535:
            raise Invalid(f"{path}.endPort", f"{end} must be at least port ({number}) and at "
                          "most 65535")
    return Port(protocol, number, end)


def _rules(obj: Any, path: str, peers_key: str, budget: Budget) -> tuple[Rule, ...]:
    out = []
    for i, item in enumerate(_list(obj, path)):
        p = f"{path}[{i}]"
        budget.take(p)
        fields = _fields(item, p, (peers_key, "ports"))
        peers = tuple(peer(x, f"{p}.{peers_key}[{j}]", budget)
                      for j, x in enumerate(_list(fields.get(peers_key), f"{p}.{peers_key}")))
        ports = tuple(port(x, f"{p}.ports[{j}]", budget)
                      for j, x in enumerate(_list(fields.get("ports"), f"{p}.ports")))
        out.append(Rule(peers, ports))
    return tuple(out)


def policy_from_k8s(obj: Any, default_namespace: str = "default") -> Policy:
    """A NetworkPolicy object (parsed YAML or JSON) as podnet's Policy; Invalid if the API
    server would refuse it (or it exceeds MAX_ITEMS)."""
    top = _fields(obj, "", ("apiVersion", "kind", "metadata", "spec"))
    if top.get("apiVersion") != API_VERSION:
        raise Invalid("apiVersion", f"{top.get('apiVersion')!r} is not {API_VERSION}")
    if top.get("kind") != KIND:
        raise Invalid("kind", f"{top.get('kind')!r} is not {KIND} (podnet applies "
                      "NetworkPolicy objects only)")
    meta = _fields(top.get("metadata"), "metadata",
                   ("name", "namespace", "labels", "annotations"))
    if "name" not in meta:
        raise Invalid("metadata.name", "required")
    name = check_name(meta["name"], "metadata.name")
    namespace = check_dns_label(meta.get("namespace", default_namespace), "metadata.namespace")
    labels(meta.get("labels"), "metadata.labels")
    if not isinstance(meta.get("annotations", {}), dict):
        raise Invalid("metadata.annotations", "must be an object")
    spec = _fields(top.get("spec"), "spec", ("podSelector", "policyTypes", "ingress", "egress"))
    if "podSelector" not in spec:
        raise Invalid("spec.podSelector", "required (give {} to select every pod of the "
                      "namespace)")
    budget = Budget()
    pods = selector(spec["podSelector"], "spec.podSelector", budget)
    types = _list(spec.get("policyTypes"), "spec.policyTypes")
    for i, t in enumerate(types):
        if t not in (INGRESS, EGRESS):
            raise Invalid(f"spec.policyTypes[{i}]", f"{t!r} is not Ingress or Egress")
    if len(set(types)) != len(types):
        raise Invalid("spec.policyTypes", "lists a type twice")
    if not types:  # the API's default: Ingress, and Egress where egress rules are given
        types = [INGRESS] + ([EGRESS] if spec.get("egress") is not None else [])
    return Policy(namespace, name, pods, tuple(t for t in (INGRESS, EGRESS) if t in types),
                  _rules(spec.get("ingress"), "spec.ingress", "from", budget),
                  _rules(spec.get("egress"), "spec.egress", "to", budget))


def _selector_k8s(sel: Selector) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if sel.match_labels:
        out["matchLabels"] = dict(sel.match_labels)
    if sel.expressions:
        out["matchExpressions"] = [
            {"key": r.key, "operator": r.operator, **({"values": list(r.values)}
                                                       if r.values else {})}
            for r in sel.expressions]
    return out


def _peer_k8s(p: Peer) -> dict[str, Any]:
    if p.ip_block is not None:
        block: dict[str, Any] = {"cidr": str(p.ip_block.cidr)}
        if p.ip_block.excepts:
            block["except"] = [str(e) for e in p.ip_block.excepts]
        return {"ipBlock": block}
    out = {}
    if p.pod_selector is not None:
        out["podSelector"] = _selector_k8s(p.pod_selector)
    if p.namespace_selector is not None:
        out["namespaceSelector"] = _selector_k8s(p.namespace_selector)
    return out


def _port_k8s(p: Port) -> dict[str, Any]:
    out: dict[str, Any] = {"protocol": p.protocol}
    if p.port is not None:
        out["port"] = p.port
    if p.end_port is not None:
        out["endPort"] = p.end_port
    return out


def to_k8s(policy: Policy) -> dict[str, Any]:
    """The policy as a NetworkPolicy object (defaults filled in, as the API server stores
    it): `policy_from_k8s(to_k8s(p)) == p`."""
    def rules(rs: tuple[Rule, ...], key: str) -> list[dict[str, Any]]:
        return [{**({key: [_peer_k8s(x) for x in r.peers]} if r.peers else {}),
                 **({"ports": [_port_k8s(x) for x in r.ports]} if r.ports else {})}
                for r in rs]

    spec: dict[str, Any] = {"podSelector": _selector_k8s(policy.pod_selector),
                            "policyTypes": list(policy.types)}
    if INGRESS in policy.types:
        spec["ingress"] = rules(policy.ingress, "from")
    if EGRESS in policy.types:
        spec["egress"] = rules(policy.egress, "to")
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": policy.name, "namespace": policy.namespace}, "spec": spec}


def named_ports(containers: Any, path: str) -> dict[str, tuple[str, int]]:
    """A pod spec's containers' named ports: name -> (protocol, number)."""
    out: dict[str, tuple[str, int]] = {}
    for i, c in enumerate(_list(containers, path)):
        if not isinstance(c, Mapping):
            raise Invalid(f"{path}[{i}]", "must be an object")
        for j, p in enumerate(_list(c.get("ports"), f"{path}[{i}].ports")):
            at = f"{path}[{i}].ports[{j}]"
            if not isinstance(p, Mapping):
                raise Invalid(at, "must be an object")
            if "name" not in p:
                continue
            number = p.get("containerPort")
            if isinstance(number, bool) or not isinstance(number, int) \
                    or not 1 <= number <= 65535:
                raise Invalid(f"{at}.containerPort", "must be a number from 1 to 65535")
            out[_string(p["name"], f"{at}.name")] = (str(p.get("protocol", "TCP")), number)
    return out


def namespace_from_k8s(obj: Any) -> tuple[str, dict[str, str]]:
    """A Namespace object's name and labels."""
    meta = _fields(obj, "", ("apiVersion", "kind", "metadata", "spec", "status")).get(
        "metadata")
    if not isinstance(meta, Mapping):
        raise Invalid("metadata", "must be an object")
    return (check_dns_label(meta.get("name"), "metadata.name"),
            labels(meta.get("labels"), "metadata.labels"))


def pod_from_k8s(obj: Any) -> Pod:
    """A Pod object's namespace, name, node, addresses (status.podIPs), labels and named
    ports."""
    top = _fields(obj, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    meta = top.get("metadata")
    if not isinstance(meta, Mapping):
        raise Invalid("metadata", "must be an object")
    spec = top.get("spec") or {}
    status = top.get("status") or {}
    if not isinstance(spec, Mapping) or not isinstance(status, Mapping):
        raise Invalid("spec", "spec and status must be objects")
    ips = []
    for i, item in enumerate(_list(status.get("podIPs"), "status.podIPs")):
        text = _string(item.get("ip") if isinstance(item, Mapping) else None,
                       f"status.podIPs[{i}].ip")
        try:
            ips.append(ipaddress.ip_address(text))
        except ValueError:
            raise Invalid(f"status.podIPs[{i}].ip", f"{text!r} is not an address") from None
    return Pod(check_dns_label(meta.get("namespace", "default"), "metadata.namespace"),
               check_name(meta.get("name"), "metadata.name"), tuple(ips),
               labels(meta.get("labels"), "metadata.labels"),
               named_ports(spec.get("containers"), "spec.containers"),
               str(spec.get("nodeName", "")))
