"""The ``pke-vsphere`` command line: start cluster workflows and watch them."""
