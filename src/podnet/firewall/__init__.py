"""The firewall, through nftables (the `nft` tool's JSON and script interfaces)."""
