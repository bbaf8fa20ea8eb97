"""Adding styles to a published style family: a new style in minutes, its family untouched.

A config style that names a family the registry already has, and is not one of that family's styles,
is an addition (Magenta's fine-tune): it trains only its own style vector against the family's frozen
network, in a pack of its own, and publishes as a new style pointing at that family version. The
family's network and its other styles are not touched. No Ray here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from factory import registry, storage
from factory.family import neutral_style_vector
from factory.packs import families, family_hashes, recipe_hash
from factory.settings import FactoryConfig, ResolvedStyle


@dataclass(frozen=True)
class FamilyBase:
    """What an addition trains against: the family version's reference (as its styles' metadata records
    it), its network's weights, and where a new vector starts (the mean of its styles' vectors)."""

    reference: dict
    width: float
    output_norm: bool  # whether its output conv has a conditional norm (families published before it have none)
    network: dict  # the conditional TransformNet's state dict
    initial_vector: torch.Tensor


def find_additions(config: FactoryConfig, styles: list[ResolvedStyle], loss_network_source: str, recipe_hashes: dict[str, str],
                   retrain: bool = False) -> tuple[list[ResolvedStyle], dict[str, FamilyBase]]:
    """(the styles, those joining a published family marked with the version they join; {family: its
    base}). recipe_hashes: each style's own (packs.recipe_hash). New styles of a family that trains
    again anyway (--retrain, or a member's recipe changed) train with it as members, not against the
    version it replaces. Stops, before any training, when a family version cannot be read or was
    trained with another loss network."""
    bases: dict[str, FamilyBase] = {}
    joining: dict[str, str] = {}
    for family, members in families(styles).items():
        if retrain:
            continue
        try:
            published = registry.read_family_metadata(config.registry, family)
        except registry.ModelNotFound as error:
            if storage.exists(registry.family_uri(config.registry, family, filename=registry.POINTER_FILE)):
                raise ValueError(f"styles of family {family!r} would join its published version, which cannot be read "
                                 f"({error}); retrain the family (--retrain --styles {members[0].name}) or name another family") from None
            continue  # not published yet: the family trains whole
        new = [style for style in members if style.name not in published["styles"]]
        staying = [style for style in members if style.name in published["styles"]]
        if not new or (staying and family_hashes(staying, recipe_hashes)[staying[0].name] != published.get("recipe_hash")):
            continue  # nothing joins, or the family trains again with its new styles as members
        trained_with = published["loss_network"]["source"]
        if trained_with != loss_network_source:
            raise ValueError(f"{', '.join(style.name for style in new)} would join family {family!r} version "
                             f"{published['family']['version']}, trained with loss network {trained_with!r}, but this run's is "
                             f"{loss_network_source!r}: a style vector learnt against another loss network does not fit the family. "
                             "Give loss_network.weights the family's, or retrain the whole family with this one (--retrain)")
        bases[family] = family_base(config.registry, published)
        joining.update({style.name: published["family"]["version"] for style in new})
    marked = [dataclasses.replace(style, adds_to=joining[style.name], width=bases[style.family].width) if style.name in joining else style
              for style in styles]
    return marked, bases


def family_base(registry_uri: str, published: dict) -> FamilyBase:
    """A published family version's network, and the mean of the vectors of its styles still on it."""
    reference = published["family"]
    vectors, network = [], None
    for name in published["styles"]:
        try:
            metadata = registry.read_metadata(registry_uri, name)
        except registry.ModelNotFound:
            continue  # withdrawn since
        if metadata.get("family", {}).get("version") == reference["version"]:
            style = registry.load_net(registry_uri, metadata)
            vectors.append(style.style_vector)
            network = style.net
    if network is None:  # no style left on this version: its network alone, and a neutral start
        network = registry.load_family_net(registry_uri, reference, published["architecture"])
    initial = torch.stack(vectors).mean(0) if vectors else neutral_style_vector(network)
    return FamilyBase(reference, published["architecture"]["width"], network.output_norm is not None, {key: value.clone() for key, value in network.state_dict().items()}, initial)


def addition_hashes(styles: list[ResolvedStyle], hashes: dict[str, str]) -> dict[str, str]:
    """An addition's recipe includes the family version it joins: a retrained family is a new base."""
    return {style.name: recipe_hash({"style": hashes[style.name], "added_to": style.adds_to}) if style.adds_to else hashes[style.name]
            for style in styles}
