//! vdfw data plane: the vhost-user virtio-net backend and the packet pipeline.
