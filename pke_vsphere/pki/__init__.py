"""Key material: the cluster's certificate authorities, node tokens and
kubeadm bootstrap tokens. Pure functions; callers decide where keys live."""
