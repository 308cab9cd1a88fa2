"""The admission webhook that turns legacy ``nvidia.com/gpu`` pods into GVirtuS DRA claims."""
