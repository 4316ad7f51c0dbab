"""Where the served model comes from: a registry alias (followed) or a pinned version.

A replica asks `resolve_version()` which version the alias names *now* and loads exactly that
version (``models:/name/N``), so an alias that moves between the two calls cannot hand it a
different model than the one it reports. Loading goes through `pipelines.registry.load_registered`
(safetensors + config, nothing unpickled).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from typing import Any

REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


class ModelSourceError(RuntimeError):
    """The registry reference is malformed, unknown, or its version cannot be loaded."""


@dataclass(frozen=True)
class RegistryReference:
    """``models:/name@alias`` (follows the alias) or ``models:/name/N`` (one version)."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, uri: str) -> RegistryReference:
        match = REGISTRY_URI.match(uri.strip())
        if not match:
            raise ModelSourceError(
                f"{uri!r} is not a registry reference: use models:/<name>@<alias> or "
                "models:/<name>/<version>"
            )
        return cls(match["name"], match["alias"], match["version"])

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else self.version_uri(self.version)

    def version_uri(self, version: str | None) -> str:
        return f"models:/{self.name}/{version}"


def default_reference(registered_model: str) -> str:
    """What `read-serve` serves when `serve.model` is empty: the registered model's champion."""
    from pipelines.champion import CHAMPION_ALIAS

    return f"models:/{registered_model}@{CHAMPION_ALIAS}"


@dataclass
class ServedModel:
    """A loaded model and the registry version it is."""

    model: Any  # read_model.model.ReadModel
    name: str
    version: str
    source: str  # the reference being served, e.g. models:/read-tiny@champion

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "source": self.source}


class RegistryModelSource:
    """Resolves and loads versions of one registered model from an MLflow tracking URI."""

    def __init__(self, reference: str, tracking_uri: str) -> None:
        self.reference = RegistryReference.parse(reference)
        self.tracking_uri = tracking_uri

    @property
    def follows_alias(self) -> bool:
        return self.reference.alias is not None

    def resolve_version(self) -> str:
        """The version the alias names now (a pinned reference: its own version)."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        if self.reference.version is not None:
            return self.reference.version
        try:
            found = MlflowClient(self.tracking_uri).get_model_version_by_alias(
                self.reference.name, self.reference.alias
            )
        except MlflowException as error:
            raise ModelSourceError(
                f"cannot resolve {self.reference.uri} at {self.tracking_uri}: "
                f"{str(error).splitlines()[0]}"
            ) from error
        return str(found.version)

    def load(self, version: str) -> ServedModel:
        """Download version `version` and rebuild it on the CPU (the caller moves it)."""
        from pipelines.registry import RegistryError, load_registered

        with tempfile.TemporaryDirectory(prefix="read-serve-") as download:
            try:
                model, _, _ = load_registered(
                    self.reference.version_uri(version),
                    tracking_uri=self.tracking_uri,
                    destination=download,
                )
            except RegistryError as error:
                raise ModelSourceError(str(error).splitlines()[0]) from error
        return ServedModel(model.eval(), self.reference.name, version, self.reference.uri)
