"""placeholder"""
class Engine: pass
