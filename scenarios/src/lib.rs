//! labtest's scenarios. Each is a reusable async function over a booted lab.
