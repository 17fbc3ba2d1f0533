"""Checks CycloneDX 1.6 JSON files with CycloneDX's own library: its
strict JSON schema validation (the 1.6 schema it bundles, no network), then
every purl parsed by packageurl-python, the purl reference implementation
(the schema alone takes any string as a purl). Exit 1 on the first bad file.

usage: target/venv/bin/python qemu-tests/check_cdx.py FILE.cdx.json...
"""
import json
import sys

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL


def purls(components):
    for c in components or []:
        if "purl" in c:
            yield c.get("bom-ref", c.get("name")), c["purl"]
        yield from purls(c.get("components"))


def check(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        return f"{path}: not valid CycloneDX 1.6: {error}"
    doc = json.loads(text)
    for ref, purl in purls(doc.get("components")):
        try:
            PackageURL.from_string(purl)
        except ValueError as e:
            return f"{path}: component {ref}: bad purl {purl!r}: {e}"
    return None


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    for path in sys.argv[1:]:
        problem = check(path)
        if problem:
            print(problem, file=sys.stderr)
            return 1
        print(f"{path}: valid CycloneDX 1.6")
    return 0


if __name__ == "__main__":
    sys.exit(main())
