#!/usr/bin/env python3
"""Extracts the structure of KubeVirt's VirtualMachine and VirtualMachineInstance types.

Reads KubeVirt v1.0.1's published swagger document (the authority for field names, types and
required fields) and writes only structure -- types, formats, required lists, references,
enums where upstream has them -- for every definition reachable from VirtualMachine,
VirtualMachineInstance and the subresource option bodies. Upstream descriptions are dropped:
edgevirt writes its own (api/kubevirt/schema/descriptions.yaml). The output is committed; the
daemon never reads the swagger file.

Usage: gen-kubevirt-schema.py SWAGGER.json OUT.json
"""
import json
import sys

ROOTS = [
    "v1.VirtualMachine", "v1.VirtualMachineList", "v1.VirtualMachineInstance",
    "v1.VirtualMachineInstanceList", "v1.StartOptions", "v1.StopOptions", "v1.RestartOptions",
    "v1.PauseOptions", "v1.UnpauseOptions", "v1.MigrateOptions", "v1.AddVolumeOptions",
    "v1.RemoveVolumeOptions", "v1.VirtualMachineInstanceGuestAgentInfo",
    "v1.VirtualMachineInstanceGuestOSUserList", "v1.VirtualMachineInstanceFileSystemList",
]
KEEP = ("type", "format", "items", "$ref", "additionalProperties", "enum", "required",
        "properties", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type", "default")


def strip(node):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "properties":
                out[k] = {name: strip(sub) for name, sub in v.items()}
            elif k in KEEP:
                out[k] = strip(v)
        return out
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def refs(node, out):
    if isinstance(node, dict):
        if "$ref" in node:
            out.add(node["$ref"].split("/")[-1])
        for v in node.values():
            refs(v, out)
    elif isinstance(node, list):
        for v in node:
            refs(v, out)


def main():
    swagger = json.load(open(sys.argv[1]))
    defs = swagger["definitions"]
    todo, seen = list(ROOTS), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        found = set()
        refs(defs[name], found)
        todo.extend(found - seen)
    out = {
        "source": "KubeVirt " + swagger["info"].get("version", "v1.0.1") + " swagger, structure only",
        "definitions": {n: strip(defs[n]) for n in sorted(seen)},
    }
    with open(sys.argv[2], "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
