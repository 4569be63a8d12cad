# The two commands of the README, and a few helpers. Everything here runs as root (netns, macvtap links).
CARGO ?= cargo

.PHONY: test sandbox tools crds images bench fmt lint

## Run every test: builds the Go test tools (cached) and the images the real cluster runs, then every test.
test: tools images
	$(CARGO) build --workspace --bins --locked
	$(CARGO) test --workspace --locked
	# The image checks (static musl release binaries + buildah) are slow, so they are #[ignore]d in the plain run.
	$(CARGO) test --locked -p macvtap-e2e --test images -- --include-ignored

## Bring up the sandbox cluster and attach a pod through the CNI (KEEP=1 leaves it running, NODES=3 for more, VM=1
## also starts a VM pod: a QEMU guest on the pod's tap).
sandbox: tools images
	$(CARGO) run --locked -p macvtap-e2e --bin sandbox -- $(if $(KEEP),--keep,) $(if $(NODES),--nodes $(NODES),) $(if $(VM),--vm,)

## Install missing Debian packages (runc, nftables, skopeo, ...) and Rust parts, then build containerd 2.x, the
## Kubernetes programs, etcd, helm, Multus, kube-ovn (CNI, controller, daemon) and the registry from the Go module
## proxy (cached).
tools:
	e2e/tools/install-deps.sh
	e2e/tools/build-tools.sh

## Regenerate the CRD YAML from the Rust types.
crds:
	$(CARGO) run -p macvtap-api --bin crdgen

## Container images as OCI archives (buildah, FROM scratch): operator, agent, the cluster's pause and busybox, and
## the VM pod image (QEMU + a guest on the pod's tap; e2e/tests/vm.rs, `sandbox --vm`).
images:
	images/build.sh
	images/build.sh vm

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
