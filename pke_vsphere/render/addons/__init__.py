"""What the leader applies after `pke install`, in place of a cloud's services:
MetalLB's configuration and the vSphere CSI driver's Secret and StorageClass.
Rendering only; the node API serves the bundle to the leader."""
