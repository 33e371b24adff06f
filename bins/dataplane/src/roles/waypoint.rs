//! The waypoint: a shared L7 proxy for the services and workloads that name it. One HBONE
//! listener at the waypoint `Gateway`'s address; every stream goes through the waypoint's
//! HTTP stack (its targets' JWT and L7 policies, routing) or, when not HTTP, its L4 policies.

use std::sync::Arc;
use std::time::Duration;

use super::{Layers, Role, Serves};
use crate::Error;
use crate::config::MeshState;
use crate::proxy::{ListenerKey, Plan, ProxyConfig};

/// A waypoint serving the `Gateway` `gateway` (`namespace/name`) of the mesh config.
pub fn waypoint(gateway: &str) -> Role {
    Role::new(
        "waypoint",
        Arc::new(GatewayListener {
            gateway: gateway.to_owned(),
        }),
        Layers::default(),
    )
}

struct GatewayListener {
    gateway: String,
}

impl Serves for GatewayListener {
    fn key(&self) -> &str {
        &self.gateway
    }

    fn check(&self, state: &MeshState) -> Result<(), Error> {
        match state.waypoints.contains_key(&self.gateway) {
            true => Ok(()),
            false => Err(Error::UnknownWaypoint(self.gateway.clone())),
        }
    }

    fn plan(&self, _cfg: &ProxyConfig, state: &MeshState) -> Result<Plan, Error> {
        let wp = state
            .waypoints
            .get(&self.gateway)
            .ok_or_else(|| Error::UnknownWaypoint(self.gateway.clone()))?;
        Ok(Plan {
            desired: vec![(
                ListenerKey::Waypoint(wp.hbone_addr()),
                format!("waypoint {}", self.gateway),
            )],
            identities: vec![(wp.address, wp.identity.clone())],
        })
    }

    fn jwks(
        &self,
        _layers: Layers,
        state: &MeshState,
    ) -> Vec<(mesh_authz::jwt::KeySource, Duration)> {
        state
            .waypoint_authn
            .values()
            .flat_map(|a| a.rules())
            .map(|r| (r.keys.clone(), r.timeout))
            .collect()
    }
}
