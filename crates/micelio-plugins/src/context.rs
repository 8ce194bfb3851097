//! A plugin's handle on its node.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use micelio_gossip::Gossip;
use micelio_identity::NodeId;
use micelio_state::{Entry, Member, State};
use micelio_wire::MsgType;

use crate::PluginError;
use crate::host::Counters;

/// What a plugin can do on its node: send messages of the types it owns,
/// read the state map, write under its own prefix, list the members.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct PluginContext {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    node_name: String,
    gossip: Gossip,
    state: State,
    msg_types: BTreeSet<u32>,
    counters: Arc<Counters>,
}

impl PluginContext {
    pub(crate) fn new(
        name: &str,
        node_name: &str,
        gossip: Gossip,
        state: State,
        msg_types: BTreeSet<u32>,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                node_name: node_name.to_owned(),
                gossip,
                state,
                msg_types,
                counters,
            }),
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        self.inner.state.node_id()
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.inner.node_name
    }

    /// Broadcasts a signed gossip message of `msg_type` (a type this
    /// plugin owns) to the whole mesh. Paced with the node's other
    /// originations (under the mesh's per-sender rate limit); refused when
    /// the node's origination queue is full.
    ///
    /// # Errors
    /// [`PluginError::NotOwned`], or the gossip layer's refusal (payload
    /// over 64 KiB, queue full, stopped).
    pub fn broadcast(&self, msg_type: u32, payload: impl Into<Bytes>) -> Result<(), PluginError> {
        if !self.inner.msg_types.contains(&msg_type) {
            return Err(PluginError::NotOwned {
                plugin: self.inner.name.clone(),
                msg_type,
            });
        }
        self.inner
            .gossip
            .try_originate(MsgType::from_u32(msg_type), payload.into())?;
        self.inner.counters.add_sent();
        Ok(())
    }

    /// The entry of the full `key` (`<node_id>/<sub-key>`), if any.
    ///
    /// # Errors
    /// The state map's error.
    pub async fn get(&self, key: &str) -> Result<Option<Entry>, PluginError> {
        Ok(self.inner.state.get(key).await?)
    }

    /// Up to `limit` entries whose full key starts with `prefix`, in key
    /// order (tombstones included, marked).
    ///
    /// # Errors
    /// The state map's error.
    pub async fn scan(&self, prefix: &str, limit: usize) -> Result<Vec<Entry>, PluginError> {
        Ok(self.inner.state.scan(prefix, limit).await?)
    }

    /// The full key of this plugin's `sub` key:
    /// `<node_id>/plugin/<name>/<sub>`.
    pub fn own_key(&self, sub: &str) -> String {
        self.inner.state.own_key(&self.sub_key(sub))
    }

    fn sub_key(&self, sub: &str) -> String {
        format!("plugin/{}/{sub}", self.inner.name)
    }

    fn check_sub(sub: &str) -> Result<(), PluginError> {
        if sub.is_empty() || sub.starts_with('/') {
            return Err(PluginError::BadKey(format!(
                "a plugin key must not be empty or start with /: {sub:?}"
            )));
        }
        Ok(())
    }

    /// Writes `value` at `<node_id>/plugin/<name>/<sub>`; durable and on
    /// its way to the mesh when it returns.
    ///
    /// # Errors
    /// [`PluginError::BadKey`], or the state map's refusal (key or value
    /// over the limits).
    pub async fn set(&self, sub: &str, value: impl Into<Bytes>) -> Result<Entry, PluginError> {
        Self::check_sub(sub)?;
        Ok(self.inner.state.set(&self.sub_key(sub), value).await?)
    }

    /// Deletes `<node_id>/plugin/<name>/<sub>`.
    ///
    /// # Errors
    /// As [`PluginContext::set`].
    pub async fn delete(&self, sub: &str) -> Result<Entry, PluginError> {
        Self::check_sub(sub)?;
        Ok(self.inner.state.delete(&self.sub_key(sub)).await?)
    }

    /// Every member of the mesh this node knows, with liveness and tags.
    ///
    /// # Errors
    /// The state map's error.
    pub async fn members(&self) -> Result<Vec<Member>, PluginError> {
        Ok(self.inner.state.members().await?)
    }
}
