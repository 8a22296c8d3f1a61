"""testtime.methods"""
