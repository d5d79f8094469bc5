"""Scale-out: process groups, device maps and FSDP placement, the allocator setting."""
