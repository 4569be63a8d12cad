//! The Helm chart (`charts/macvtap-operator`) with the real `helm` binary and a real kube-apiserver (RBAC on):
//! lint, rendering with default and other values, the values schema, install/upgrade/uninstall exactly as the
//! chart README says, and what the chart's own ServiceAccounts may and may not do (RBAC, and the agent's
//! ValidatingAdmissionPolicy), using tokens the API server issues for them.

mod agent_rbac;
mod api;
mod helm;
mod operator_rbac;
mod readme_install;
mod render_defaults;
mod render_values;
mod schema;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchParams,
};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use kube::{Client, ResourceExt};
use macvtap_api::{MacvtapNodeState, MacvtapPool};
use macvtap_e2e::control_plane::ControlPlane;
use macvtap_e2e::{tools, wait, workspace};
use serde_json::{Value, json};

const CRD_POOLS: &str = "macvtappools.macvtap.network.kubevirt.io";
const CRD_NODE_STATES: &str = "macvtapnodestates.macvtap.network.kubevirt.io";
/// How long a new or removed ValidatingAdmissionPolicy may take to reach the API server's admission chain.
const POLICY_SYNC: Duration = Duration::from_secs(20);

use api::*;
use helm::*;
