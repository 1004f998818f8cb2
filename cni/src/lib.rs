//! The static-macvlan CNI plugin as a library, so that its layers can be tested on their own.
//!
//! - [`netns`]: network namespaces (open, enter for a scope with a guard, sysctls inside).
//! - [`netlink`]: links, addresses, routes, VLAN sub-interfaces and the host shim, behind one
//!   small struct; the pod attachment set-up and tear-down built from them.
//! - [`policy`]: what an ADD allocates: netconf, pod annotations, AllocationRules, selectors.
//! - [`rule_cache`]: the node's cache of compiled AllocationRules, so that an ADD does not
//!   compile the rules the previous one compiled.
//! - [`subnet_cache`]: the node's copy of the subnets its ADDs used, so that an ADD claims and
//!   creates its link before it has read the configuration.

pub mod conf;
pub mod errors;
pub mod netlink;
pub mod netns;
pub mod plugin;
pub mod policy;
pub mod rule_cache;
pub mod subnet_cache;
pub mod types;
