//! Services: named groups of instances, each bound to the session that registered it.

use std::collections::BTreeMap;

use corral_proto::{
    CommandError, Event, ServiceInstance, SessionId, limits::SERVICE_INSTANCES_MAX,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ServiceTable {
    services: BTreeMap<String, BTreeMap<String, ServiceInstance>>,
}

impl ServiceTable {
    /// The instances of `service`, ordered by id.
    pub(crate) fn instances(&self, service: &str) -> impl Iterator<Item = &ServiceInstance> {
        self.services
            .get(service)
            .into_iter()
            .flat_map(|m| m.values())
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &String> {
        self.services.keys()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &ServiceInstance> {
        self.services.values().flat_map(|m| m.values())
    }

    pub(crate) fn len(&self) -> usize {
        self.services.values().map(BTreeMap::len).sum()
    }

    pub(crate) fn get(&self, service: &str, id: &str) -> Option<&ServiceInstance> {
        self.services.get(service)?.get(id)
    }

    /// Registers or updates an instance; returns whether anything changed.
    pub(crate) fn register(
        &mut self,
        instance: ServiceInstance,
        events: &mut Vec<Event>,
    ) -> Result<bool, CommandError> {
        let instances = self.services.get(&instance.service);
        if let Some(existing) = instances.and_then(|m| m.get(&instance.id)) {
            if existing.session != instance.session {
                return Err(CommandError::InstanceTaken {
                    service: instance.service.clone(),
                    id: instance.id.clone(),
                    session: existing.session,
                });
            }
            if *existing == instance {
                return Ok(false);
            }
        } else if instances.is_some_and(|m| m.len() >= SERVICE_INSTANCES_MAX) {
            return Err(CommandError::TooManyInstances {
                service: instance.service.clone(),
                max: SERVICE_INSTANCES_MAX,
            });
        }
        events.push(Event::ServiceUp(instance.clone()));
        self.services
            .entry(instance.service.clone())
            .or_default()
            .insert(instance.id.clone(), instance);
        Ok(true)
    }

    /// The session that registered an instance.
    pub(crate) fn session_of(&self, service: &str, id: &str) -> Result<SessionId, CommandError> {
        self.get(service, id)
            .map(|i| i.session)
            .ok_or_else(|| CommandError::NoSuchInstance {
                service: service.to_string(),
                id: id.to_string(),
            })
    }

    pub(crate) fn remove(&mut self, service: &str, id: &str, events: &mut Vec<Event>) {
        let Some(instances) = self.services.get_mut(service) else {
            return;
        };
        if instances.remove(id).is_some() {
            events.push(Event::ServiceDown {
                service: service.to_string(),
                id: id.to_string(),
            });
        }
        if instances.is_empty() {
            self.services.remove(service);
        }
    }
}
