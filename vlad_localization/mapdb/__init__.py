"""mapdb"""
