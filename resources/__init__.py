"""Resources and the executor, chosen in one place from the active profile."""

from __future__ import annotations

import dagster as dg

from resources.artifact_store import ArtifactStore
from resources.profiles import Profile, load_profile


class ProfileResource(dg.ConfigurableResource):
    """The active profile's settings, as a resource so runs record what they ran with."""

    name: str
    phi_home: str
    landing_root: str
    catalog_path: str
    artifact_root: str

    @classmethod
    def from_profile(cls, profile: Profile) -> ProfileResource:
        return cls(name=profile.name, phi_home=profile.phi_home, landing_root=profile.landing_root,
                   catalog_path=profile.catalog_path, artifact_root=profile.artifact_root)

    def get(self) -> Profile:
        env = {"PHI_PROFILE": self.name, "PHI_HOME": self.phi_home,
               "PHI_LANDING_ROOT": self.landing_root, "PHI_CATALOG": self.catalog_path,
               "PHI_ARTIFACT_ROOT": self.artifact_root}
        return load_profile(env)


def build_executor(profile: Profile) -> dg.ExecutorDefinition:
    if profile.name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor  # one pod per step: per-shard fan-out on the cluster
    return dg.multiprocess_executor


def build_resources(profile: Profile) -> dict[str, dg.ConfigurableResource]:
    return {
        "store": ArtifactStore(root=profile.artifact_root),
        "profile": ProfileResource.from_profile(profile),
    }


__all__ = ["ArtifactStore", "Profile", "ProfileResource", "build_executor", "build_resources",
           "load_profile"]
