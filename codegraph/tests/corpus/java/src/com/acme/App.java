package com.acme;

import com.acme.shapes.Circle;
import com.acme.shapes.Square;
import com.acme.util.Format;

public class App {
    public static void main(String[] args) {
        Circle c = new Circle(1);
        Square s = new Square(2);
        c.area();
        System.out.println(s.describe());
        Format.number(3);
        helper();
    }

    static void helper() {}
}
