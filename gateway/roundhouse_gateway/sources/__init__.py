"""Where the catalog comes from: the cluster (watches), a standalone config file, or engines the gateway
runs itself in mode onDemand; and the GPU budget view built from them."""
