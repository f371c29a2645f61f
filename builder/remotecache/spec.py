"""`--cache-to` and `--cache-from` values, checked before anything is built.

    --cache-to   type=registry,ref=REF[,mode=min|max][,compression=gzip][,oci-mediatypes=true]
                          [,image-manifest=true][,ignore-error=true]
                 type=local,dest=DIR[,tag=TAG][,mode=…][,compression=gzip][,ignore-error=true]
                 type=inline
    --cache-from type=registry,ref=REF | type=local,src=DIR[,tag=TAG] | REF (an image: its inline
                 cache, or a registry cache)
"""

from __future__ import annotations


from builder.errors import BuildError
from builder.plumbing.records import dataclass

_BOOLEANS = {"": True, "true": True, "1": True, "false": False, "0": False}

EXPORT_ATTRIBUTES = {
    "registry": ("ref", "mode", "compression", "oci-mediatypes", "image-manifest", "ignore-error"),
    "local": ("dest", "tag", "mode", "compression", "oci-mediatypes", "image-manifest", "ignore-error"),
    "inline": ("mode",),
}
IMPORT_ATTRIBUTES = {
    "registry": ("ref",),
    "local": ("src", "tag"),
}
_NOT_BUILT = ("gha", "s3", "azblob")


@dataclass(frozen=True)
class CacheSpec:
    type: str                                # registry | local | inline
    attrs: tuple[tuple[str, str], ...] = ()

    def get(self, name: str, default: str = "") -> str:
        return dict(self.attrs).get(name, default)

    def flag(self, name: str, default: bool) -> bool:
        value = self.get(name, "true" if default else "false").lower()
        return _BOOLEANS[value]

    @property
    def mode(self) -> str:
        return self.get("mode", "min")

    @property
    def where(self) -> str:
        """The place it names, for messages and the metadata file."""
        if self.type == "local":
            return self.get("dest") or self.get("src")
        return self.get("ref") or "the image config"

    def __str__(self) -> str:
        return ",".join([f"type={self.type}", *(f"{k}={v}" for k, v in self.attrs)])

    @classmethod
    def parse_export(cls, text: str) -> "CacheSpec":
        spec = cls._parse(text, "--cache-to", EXPORT_ATTRIBUTES, bare=None)
        if spec.mode not in ("min", "max"):
            raise BuildError(f'invalid --cache-to "{text}": mode must be min or max, not "{spec.mode}"')
        if spec.type == "inline" and spec.mode == "max":
            raise BuildError(f'invalid --cache-to "{text}": inline cache supports mode=min only '
                             "(use type=registry for mode=max)")
        needed = {"registry": "ref", "local": "dest"}.get(spec.type)
        if needed and not spec.get(needed):
            raise BuildError(f'invalid --cache-to "{text}": type={spec.type} needs {needed}=')
        compression = spec.get("compression", "gzip")
        if compression != "gzip":
            raise BuildError(f'invalid --cache-to "{text}": compression={compression} is not supported yet '
                             "(cache layers are the build's gzip layers)")
        for name in ("oci-mediatypes", "image-manifest", "ignore-error"):
            if spec.get(name, "true").lower() not in _BOOLEANS:
                raise BuildError(f'invalid --cache-to "{text}": {name} must be true or false')
        for name in ("oci-mediatypes", "image-manifest"):
            if not spec.flag(name, True):
                raise BuildError(f'invalid --cache-to "{text}": {name}=false is not supported: the cache is '
                                 "written as an OCI image manifest (BuildKit's image-manifest=true)")
        return spec

    @classmethod
    def parse_import(cls, text: str) -> "CacheSpec":
        spec = cls._parse(text, "--cache-from", IMPORT_ATTRIBUTES, bare="registry")
        needed = {"registry": "ref", "local": "src"}[spec.type]
        if not spec.get(needed):
            raise BuildError(f'invalid --cache-from "{text}": type={spec.type} needs {needed}=')
        return spec

    @classmethod
    def _parse(cls, text: str, flag: str, known: dict, bare: str | None) -> "CacheSpec":
        text = text.strip()
        if not text:
            raise BuildError(f"invalid {flag}: empty value")
        if "=" not in text.split(",")[0]:
            if bare is None:
                raise BuildError(f'invalid {flag} "{text}": use type=registry|local|inline,...')
            return cls(bare, (("ref", text),))   # a bare image reference, as buildx takes it
        attrs: dict[str, str] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise BuildError(f'invalid {flag} "{text}": "{part}" is not key=value')
            attrs[key.strip()] = value.strip()
        kind = attrs.pop("type", "registry" if "ref" in attrs and bare else "")
        if kind in _NOT_BUILT:
            raise BuildError(f'{flag} type={kind} is not supported (supported: {", ".join(known)})')
        if kind not in known:
            raise BuildError(f'invalid {flag} "{text}": type must be one of {", ".join(known)}')
        for key in attrs:
            if key not in known[kind]:
                raise BuildError(f'invalid {flag} "{text}": unknown attribute {key}= for type={kind} '
                                 f'(known: {", ".join(known[kind]) or "none"})')
        return cls(kind, tuple(sorted(attrs.items())))
