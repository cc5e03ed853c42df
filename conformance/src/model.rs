// SPDX-License-Identifier: MIT OR Apache-2.0
//! The in-process model backend (`--backend model`): `v4v_sim::Model`, one per scenario.

use v4v::Hypervisor;
use v4v::abi::{DOMID_FIRST_RESERVED, DomId};
use v4v_sim::Model;

use crate::backend::{Backend, BackendError, Capability, InspectKind};

/// Runs scenarios against a fresh [`Model`] each.
#[derive(Default)]
pub struct ModelBackend {
    model: Option<Model>,
}

impl ModelBackend {
    pub fn new() -> Self {
        ModelBackend { model: None }
    }

    fn model(&self) -> Result<&Model, BackendError> {
        self.model
            .as_ref()
            .ok_or_else(|| BackendError::Failed("no scenario begun".into()))
    }
}

impl Backend for ModelBackend {
    fn name(&self) -> &str {
        "model"
    }

    fn supports(&self, cap: Capability) -> bool {
        match cap {
            Capability::Create | Capability::Destroy | Capability::Inspect => true,
        }
    }

    fn can_act_as(&self, domid: DomId) -> bool {
        domid < DOMID_FIRST_RESERVED
    }

    fn begin(&mut self) -> Result<(), BackendError> {
        self.model = Some(Model::new());
        Ok(())
    }

    fn create_domain(&mut self, domid: DomId) -> Result<Box<dyn Hypervisor>, BackendError> {
        let d = self
            .model()?
            .create_domain(domid)
            .map_err(|e| BackendError::Failed(format!("create domain {domid}: {e}")))?;
        Ok(Box::new(d))
    }

    fn destroy_domain(&mut self, domid: DomId) -> Result<(), BackendError> {
        self.model()?
            .destroy_domain(domid)
            .map_err(|e| BackendError::Failed(format!("destroy domain {domid}: {e}")))
    }

    fn inspect(&self, what: InspectKind) -> Result<u64, BackendError> {
        let m = self.model()?;
        Ok(match what {
            InspectKind::Rings => m.ring_count() as u64,
            InspectKind::Waiters => m.waiter_count() as u64,
        })
    }

    fn end(&mut self) {
        self.model = None;
    }
}
